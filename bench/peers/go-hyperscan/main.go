// go-hyperscan: the Go consumer peer of bench/e2e.py with Hyperscan (github.com/flier/gohs, cgo,
// Debian libhyperscan-dev): all rules in one block database (id = rank), one scan per text field,
// the lowest matching id allowed on that field wins.
package main

import (
	"fmt"

	"github.com/flier/gohs/hyperscan"

	"benchpeers/gopeer"
)

type classifier struct {
	rules   []gopeer.Rule
	db      hyperscan.BlockDatabase
	scratch *hyperscan.Scratch
	best    int
	field   string
}

func (c *classifier) onMatch(id uint, from, to uint64, flags uint, _ interface{}) error {
	i := int(id)
	if (c.best < 0 || i < c.best) && c.rules[i].Allowed(c.field) {
		c.best = i
	}
	return nil
}

func (c *classifier) Classify(fields []gopeer.Field) int {
	c.best = -1
	for _, f := range fields {
		c.field = f.Name
		if err := c.db.Scan([]byte(f.Text), c.scratch, c.onMatch, nil); err != nil {
			panic(fmt.Sprintf("hyperscan scan: %v", err))
		}
	}
	return c.best
}

func pattern(i int, r gopeer.Rule) *hyperscan.Pattern {
	flags := hyperscan.SingleMatch
	for _, f := range r.Flags {
		switch f {
		case "caseless":
			flags |= hyperscan.Caseless
		case "multiline":
			flags |= hyperscan.MultiLine
		case "dotall":
			flags |= hyperscan.DotAll
		}
	}
	p := hyperscan.NewPattern(r.Pattern, flags)
	p.Id = i
	return p
}

func factory(rules []gopeer.Rule) (func() gopeer.Classifier, []string, error) {
	var rejected []string
	patterns := make([]*hyperscan.Pattern, 0, len(rules))
	for i, r := range rules {
		p := pattern(i, r)
		if _, err := hyperscan.NewBlockDatabase(p); err != nil { // alone first: errors name the rule
			rejected = append(rejected, r.ID)
			continue
		}
		patterns = append(patterns, p)
	}
	if len(rejected) > 0 {
		return nil, rejected, nil
	}
	db, err := hyperscan.NewBlockDatabase(patterns...)
	if err != nil {
		return nil, nil, err
	}
	proto, err := hyperscan.NewScratch(db)
	if err != nil {
		return nil, nil, err
	}
	return func() gopeer.Classifier {
		s, err := proto.Clone() // scratch space is per goroutine
		if err != nil {
			panic(err)
		}
		return &classifier{rules: rules, db: db, scratch: s}
	}, nil, nil
}

func main() { gopeer.Main("go-hyperscan", factory) }
