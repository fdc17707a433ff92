// go-regexp: the Go consumer peer of bench/e2e.py with Go's regexp (RE2): every rule's pattern is
// tried in rank order on the event's text fields; the first rule that matches wins.
package main

import (
	"regexp"

	"benchpeers/gopeer"
)

type classifier struct {
	rules []gopeer.Rule
	res   []*regexp.Regexp
}

func (c *classifier) Classify(fields []gopeer.Field) int {
	for i, re := range c.res {
		r := &c.rules[i]
		for _, f := range fields {
			if r.Allowed(f.Name) && re.MatchString(f.Text) {
				return i
			}
		}
	}
	return -1
}

func compile(r gopeer.Rule) (*regexp.Regexp, error) {
	prefix := ""
	for _, f := range r.Flags {
		switch f {
		case "caseless":
			prefix += "i"
		case "multiline":
			prefix += "m"
		case "dotall":
			prefix += "s"
		}
	}
	expr := r.Pattern
	if prefix != "" {
		expr = "(?" + prefix + ")" + expr
	}
	return regexp.Compile(expr)
}

func factory(rules []gopeer.Rule) (func() gopeer.Classifier, []string, error) {
	c := &classifier{rules: rules}
	var rejected []string
	for _, r := range rules {
		re, err := compile(r)
		if err != nil {
			rejected = append(rejected, r.ID)
			continue
		}
		c.res = append(c.res, re)
	}
	if len(rejected) > 0 {
		return nil, rejected, nil
	}
	// regexp.Regexp is safe for concurrent use: one classifier serves every worker.
	return func() gopeer.Classifier { return c }, nil, nil
}


func main() { gopeer.Main("go-regexp", factory) }
