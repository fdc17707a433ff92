// Package gopeer is the shared body of the Go peers of bench/e2e.py: a consumer of the kind the
// pipeline replaces (segmentio/kafka-go consumer group -> unpack envelope -> classify -> produce to a
// per-category topic, dead letters to a DLQ topic). The classifier is pluggable (Go regexp or Hyperscan).
//
// It reads the input topic once with a fresh consumer group, stops at the end offsets seen at start,
// commits, and prints one JSON line of counts and timings on stdout.
package gopeer

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"sync"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/compress"
)

// Rule is one classification rule, in rank order (the bench sorts them: priority, specificity, file).
type Rule struct {
	ID       string   `json:"id"`
	Category string   `json:"category"`
	Pattern  string   `json:"pattern"`
	Fields   []string `json:"fields"` // nil: any text field
	Flags    []string `json:"flags"`
}

// Field is one text field of an event, in the order the event lists them.
type Field struct {
	Name, Text string
}

// Classifier returns the index of the winning rule (the lowest index that matches a field it may
// look at), or -1.
type Classifier interface {
	Classify(fields []Field) int
}

// Factory builds a classifier per worker goroutine (Hyperscan scratch is per goroutine); the second
// result lists rule ids it cannot compile (-check mode).
type Factory func(rules []Rule) (func() Classifier, []string, error)

var textFields = []string{"message", "stack", "content", "msg", "log", "reason", "exception"}

const maxFieldChars = 65536

type options struct {
	brokers, topic, group, outPrefix, dlq, rules, engine string
	workers                                              int
	check                                                bool
	timeout                                              time.Duration
}

// Main runs the peer; engine names the classifier in the output ("go-regexp", "go-hyperscan").
func Main(engine string, factory Factory) {
	var o options
	flag.StringVar(&o.brokers, "brokers", "127.0.0.1:9092", "bootstrap broker")
	flag.StringVar(&o.topic, "topic", "", "input topic")
	flag.StringVar(&o.group, "group", "", "consumer group (fresh: starts at the earliest offset)")
	flag.StringVar(&o.outPrefix, "out-prefix", "", "output topic = prefix + category")
	flag.StringVar(&o.dlq, "dlq", "", "dead-letter topic")
	flag.StringVar(&o.rules, "rules", "", "rules JSON (a list, in rank order)")
	flag.IntVar(&o.workers, "workers", runtime.GOMAXPROCS(0), "processing goroutines")
	flag.BoolVar(&o.check, "check", false, "print the ids of rules this engine cannot compile, then exit")
	flag.DurationVar(&o.timeout, "timeout", 20*time.Minute, "give up after this long")
	flag.Parse()
	o.engine = engine

	raw, err := os.ReadFile(o.rules)
	die(err)
	var rules []Rule
	die(json.Unmarshal(raw, &rules))
	newClassifier, rejected, err := factory(rules)
	if o.check {
		if rejected == nil {
			rejected = []string{}
		}
		out, _ := json.Marshal(map[string]any{"engine": engine, "rejected": rejected})
		fmt.Println(string(out))
		return
	}
	die(err)
	if len(rejected) > 0 {
		die(fmt.Errorf("rules this engine cannot run: %v (pass only the common subset)", rejected))
	}
	die(run(o, rules, newClassifier))
}

func die(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}

func endOffsets(brokers, topic string) (map[int]int64, error) {
	conn, err := kafka.Dial("tcp", brokers)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	parts, err := conn.ReadPartitions(topic)
	if err != nil {
		return nil, err
	}
	ends := map[int]int64{}
	for _, p := range parts {
		lc, err := kafka.DialLeader(context.Background(), "tcp", brokers, topic, p.ID)
		if err != nil {
			return nil, err
		}
		first, last, err := lc.ReadOffsets()
		lc.Close()
		if err != nil {
			return nil, err
		}
		if last > first {
			ends[p.ID] = last
		}
	}
	return ends, nil
}

type stats struct {
	events, dead, classified int64
}

func run(o options, rules []Rule, newClassifier func() Classifier) error {
	t0 := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
	defer cancel()
	ends, err := endOffsets(o.brokers, o.topic)
	if err != nil {
		return err
	}
	var total int64
	for _, e := range ends {
		total += e
	}
	reader := kafka.NewReader(kafka.ReaderConfig{
		Brokers:        []string{o.brokers},
		GroupID:        o.group,
		Topic:          o.topic,
		StartOffset:    kafka.FirstOffset,
		MinBytes:       1,
		MaxBytes:       16 << 20,
		MaxWait:        100 * time.Millisecond,
		QueueCapacity:  10000,
		CommitInterval: time.Second,
	})
	writer := &kafka.Writer{
		Addr:         kafka.TCP(o.brokers),
		Balancer:     &kafka.Hash{},
		Compression:  compress.Lz4,
		RequiredAcks: kafka.RequireAll,
		BatchSize:    10000,
		// The broker refuses a record batch above message.max.bytes (1 MiB): with 16 MiB batches the
		// lz4-compressed batch sometimes exceeded it ("Message Size Too Large", rc 1 in a 1M run).
		BatchBytes:   1 << 20,
		BatchTimeout: 20 * time.Millisecond,
	}

	in := make(chan kafka.Message, 10000)
	out := make(chan []kafka.Message, 256)
	var firstAt time.Time
	var readErr error
	done := map[int]bool{}
	var consumed int64
	go func() { // reader: until every partition reached its end offset seen at start
		defer close(in)
		last := map[int]kafka.Message{}
		for len(done) < len(ends) {
			m, err := reader.FetchMessage(ctx)
			if err != nil {
				readErr = err
				return
			}
			if consumed == 0 {
				firstAt = time.Now()
			}
			end, ok := ends[m.Partition]
			if !ok || m.Offset >= end {
				continue // written after the start: not part of this run's input
			}
			consumed++
			last[m.Partition] = m
			in <- m
			if m.Offset+1 >= end {
				done[m.Partition] = true
			}
		}
		msgs := make([]kafka.Message, 0, len(last))
		for _, m := range last {
			msgs = append(msgs, m)
		}
		readErr = reader.CommitMessages(ctx, msgs...)
	}()

	var wg sync.WaitGroup
	st := make([]stats, o.workers)
	for w := 0; w < o.workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			c := newClassifier()
			p := &processor{o: &o, rules: rules, classify: c, st: &st[w]}
			batch := make([]kafka.Message, 0, 1000)
			for m := range in {
				batch = p.process(m, batch)
				if len(batch) >= 1000 {
					out <- batch
					batch = make([]kafka.Message, 0, 1000)
				}
			}
			if len(batch) > 0 {
				out <- batch
			}
		}(w)
	}
	go func() { wg.Wait(); close(out) }()

	// writer: collects worker batches into large synchronous writes (acks=all) until the input ends
	var written int64
	var writeErr error
	pending := make([]kafka.Message, 0, 20000)
	flush := func() {
		if len(pending) == 0 || writeErr != nil {
			return
		}
		if err := writer.WriteMessages(ctx, pending...); err != nil {
			writeErr = err
		}
		written += int64(len(pending))
		pending = pending[:0]
	}
	for b := range out {
		pending = append(pending, b...)
		if len(pending) >= 20000 {
			flush()
		}
	}
	flush()
	if err := writer.Close(); err != nil && writeErr == nil {
		writeErr = err
	}
	reader.Close()
	end := time.Now()
	if readErr != nil {
		return fmt.Errorf("read: %w", readErr)
	}
	if writeErr != nil {
		return fmt.Errorf("write: %w", writeErr)
	}
	var sum stats
	for _, s := range st {
		sum.events += s.events
		sum.dead += s.dead
		sum.classified += s.classified
	}
	res := map[string]any{
		"engine": o.engine, "records_in": consumed, "records_expected": total, "events_out": sum.events,
		"dead_letters": sum.dead, "classified": sum.classified, "written": written,
		"wall_s": end.Sub(t0).Seconds(), "startup_s": firstAt.Sub(t0).Seconds(),
		"steady_s": end.Sub(firstAt).Seconds(), "workers": o.workers, "gomaxprocs": runtime.GOMAXPROCS(0),
	}
	b, _ := json.Marshal(res)
	fmt.Println(string(b))
	return nil
}

type processor struct {
	o        *options
	rules    []Rule
	classify Classifier
	st       *stats
	topics   map[string]string
}

type event struct {
	EventID    string            `json:"event_id"`
	EventTime  int64             `json:"event_time"`
	IngestTime int64             `json:"ingest_time"`
	AppID      string            `json:"app_id"`
	EventName  string            `json:"event_name"`
	Platform   string            `json:"platform"`
	DeviceID   string            `json:"device_id"`
	DurationMs *float64          `json:"duration_ms"`
	Fields     map[string]string `json:"fields"`
	Attrs      map[string]any    `json:"attrs"`
	Src        []any             `json:"src"`
	Envelope   string            `json:"envelope"`
	Category   string            `json:"category"`
	RuleID     string            `json:"rule_id"`
	Engine     string            `json:"engine"`
}

type reject struct{ code, reason string }

func (p *processor) dead(m kafka.Message, code, reason string, payload []byte, batch []kafka.Message) []kafka.Message {
	p.st.dead++
	return append(batch, kafka.Message{
		Topic: p.o.dlq, Key: m.Key, Value: payload,
		Headers: append([]kafka.Header{{Key: "dlq.code", Value: []byte(code)},
			{Key: "dlq.reason", Value: []byte(reason)},
			{Key: "dlq.src", Value: []byte(fmt.Sprintf("%s:%d:%d", m.Topic, m.Partition, m.Offset))}}, m.Headers...),
	})
}

// process unpacks one Kafka record into events (or dead letters), classifies and routes them.
func (p *processor) process(m kafka.Message, batch []kafka.Message) []kafka.Message {
	v := bytes.TrimSpace(m.Value)
	if len(v) == 0 {
		return p.dead(m, "EMPTY", "value is empty", m.Value, batch)
	}
	now := time.Now().UnixMilli()
	var obj any
	if err := json.Unmarshal(v, &obj); err != nil {
		if lines := bytes.Split(v, []byte("\n")); len(lines) >= 2 {
			var first map[string]any
			if json.Unmarshal(bytes.TrimSpace(lines[0]), &first) == nil {
				for i, ln := range lines {
					ln = bytes.TrimSpace(ln)
					if len(ln) == 0 {
						continue
					}
					var o map[string]any
					if err := json.Unmarshal(ln, &o); err != nil {
						batch = p.dead(m, "DECODE_ERROR", fmt.Sprintf("line %d: not JSON: %v", i, err), ln, batch)
						continue
					}
					batch = p.emit(m, o, o, "jsonl", i, now, ln, batch)
				}
				return batch
			}
		}
		return p.dead(m, "DECODE_ERROR", "not JSON: "+err.Error(), m.Value, batch)
	}
	o, ok := obj.(map[string]any)
	if !ok {
		return p.dead(m, "VALIDATION_ERROR", "value: expected a JSON object", m.Value, batch)
	}
	meta, hasMeta := o["meta"]
	data, hasData := o["data"]
	if hasMeta && hasData {
		mm, ok1 := meta.(map[string]any)
		items, ok2 := data.([]any)
		if !ok1 || !ok2 || len(items) == 0 {
			return p.dead(m, "VALIDATION_ERROR", "bad upload envelope", m.Value, batch)
		}
		for i, it := range items {
			item, ok := it.(map[string]any)
			if !ok {
				batch = p.dead(m, "VALIDATION_ERROR", fmt.Sprintf("data[%d]: expected an object", i), m.Value, batch)
				continue
			}
			merged := make(map[string]any, len(mm)+len(item))
			for k, x := range mm {
				merged[k] = x
			}
			for k, x := range item {
				merged[k] = x
			}
			batch = p.emit(m, merged, item, "upload", i, now, nil, batch)
		}
		return batch
	}
	hdrs, hasH := o["headers"]
	logs, hasL := o["logs"]
	if hasH && hasL {
		h, ok1 := hdrs.(map[string]any)
		l, ok2 := logs.(map[string]any)
		if !ok1 || !ok2 {
			return p.dead(m, "VALIDATION_ERROR", "bad logs envelope", m.Value, batch)
		}
		merged := make(map[string]any, len(h)+len(l)+1)
		for k, x := range h {
			if k != "app_id" && k != "log_name" {
				merged[k] = x
			}
		}
		for k, x := range l {
			merged[k] = x
		}
		if a, ok := h["app_id"]; ok {
			merged["app_id"] = a
		}
		if ln, ok := h["log_name"].(string); ok && ln != "" {
			merged["event_name"] = "t_" + ln
		}
		if t, ok := merged["mtime"].(float64); ok {
			merged["timestamp"] = t * 1000
			delete(merged, "mtime")
		}
		return p.emit(m, merged, merged, "logs", 0, now, nil, batch)
	}
	return p.emit(m, o, o, "json", 0, now, nil, batch)
}

func scalar(v any) (string, bool) {
	switch x := v.(type) {
	case nil:
		return "", true
	case string:
		return x, true
	case float64:
		return strconv.FormatFloat(x, 'f', -1, 64), true
	case bool:
		return strconv.FormatBool(x), true
	}
	return "", false
}

func pop(m map[string]any, k string) any {
	v := m[k]
	delete(m, k)
	return v
}

// build validates and shapes one event (same fields as the pipeline's unpack).
func (p *processor) build(rec kafka.Message, m, own map[string]any, envelope string, index int, now int64) (*event, *reject) {
	if d, ok := own["duration_ms"]; ok && d != nil {
		if _, isNum := d.(float64); !isNum {
			return nil, &reject{"VALIDATION_ERROR", fmt.Sprintf("field 'duration_ms': expected number, got %v", d)}
		}
	}
	if d, ok := own["device_id"]; ok && d != nil {
		if _, isStr := d.(string); !isStr {
			return nil, &reject{"VALIDATION_ERROR", "field 'device_id': expected string"}
		}
	}
	ev := &event{IngestTime: now, Envelope: envelope, Fields: map[string]string{}}
	ev.EventTime = rec.Time.UnixMilli()
	for _, k := range []string{"timestamp", "time", "ts", "event_time"} {
		if t, ok := m[k]; ok && t != nil {
			f, isNum := t.(float64)
			if !isNum || f < 0 {
				return nil, &reject{"VALIDATION_ERROR", fmt.Sprintf("field '%s': not a time", k)}
			}
			ev.EventTime = int64(f)
			delete(m, k)
			break
		}
	}
	var ok bool
	if ev.AppID, ok = scalar(pop(m, "app_id")); !ok || ev.AppID == "" {
		return nil, &reject{"VALIDATION_ERROR", "field 'app_id': required but missing"}
	}
	name := pop(m, "event_name")
	if name == nil {
		name = pop(m, "name")
	}
	ev.EventName, _ = scalar(name)
	ev.Platform, _ = scalar(pop(m, "platform"))
	ev.DeviceID, _ = scalar(pop(m, "device_id"))
	if d, ok := pop(m, "duration_ms").(float64); ok {
		ev.DurationMs = &d
	}
	for _, k := range textFields {
		if s, ok := m[k].(string); ok {
			if len(s) > maxFieldChars {
				return nil, &reject{"TOO_LARGE", fmt.Sprintf("field '%s': %d chars > max_field_chars", k, len(s))}
			}
			ev.Fields[k] = s
			delete(m, k)
		}
	}
	ev.Attrs = m
	sum := sha256.Sum256([]byte(fmt.Sprintf("%s:%d:%d:%d", rec.Topic, rec.Partition, rec.Offset, index)))
	ev.EventID = hex.EncodeToString(sum[:16])
	ev.Src = []any{rec.Topic, rec.Partition, rec.Offset, index}
	return ev, nil
}

func (p *processor) emit(rec kafka.Message, m, own map[string]any, envelope string, index int, now int64, raw []byte, batch []kafka.Message) []kafka.Message {
	ev, rej := p.build(rec, m, own, envelope, index, now)
	if rej != nil {
		if raw == nil {
			raw = rec.Value
		}
		return p.dead(rec, rej.code, rej.reason, raw, batch)
	}
	fields := make([]Field, 0, len(ev.Fields))
	for _, k := range textFields {
		if s, ok := ev.Fields[k]; ok {
			fields = append(fields, Field{k, s})
		}
	}
	ev.Category, ev.Engine = "UNCLASSIFIED", "default"
	if i := p.classify.Classify(fields); i >= 0 {
		ev.Category, ev.RuleID, ev.Engine = p.rules[i].Category, p.rules[i].ID, p.o.engine
		p.st.classified++
	}
	value, err := json.Marshal(ev)
	if err != nil {
		return p.dead(rec, "SERIALIZATION_ERROR", err.Error(), rec.Value, batch)
	}
	if p.topics == nil {
		p.topics = map[string]string{}
	}
	topic, ok := p.topics[ev.Category]
	if !ok {
		topic = p.o.outPrefix + ev.Category
		p.topics[ev.Category] = topic
	}
	var headers []kafka.Header
	for _, h := range rec.Headers {
		if h.Key == "traceparent" {
			headers = append(headers, h)
		}
	}
	p.st.events++
	return append(batch, kafka.Message{Topic: topic, Key: []byte(ev.AppID), Value: value, Headers: headers})
}

// Allowed reports whether rule r may look at field name.
func (r *Rule) Allowed(name string) bool {
	if r.Fields == nil {
		return true
	}
	for _, f := range r.Fields {
		if f == name {
			return true
		}
	}
	return false
}
