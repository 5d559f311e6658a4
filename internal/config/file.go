package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"gopkg.in/yaml.v3"
)

// maxFileBytes bounds how much of the config file is read.
const maxFileBytes = 1 << 20

// fileValue is one scalar setting from the file, as text.
type fileValue struct {
	text string
	line int
}

// fileValues is what the config file sets.
type fileValues struct {
	scalars   map[string]fileValue
	breakers  map[string]yaml.Node
	upstreams map[string]yaml.Node
	events    *yaml.Node
	outbox    *yaml.Node
}

// lookup returns the file's value for f; a nil *fileValues (no file) has none.
func (v *fileValues) lookup(f field) (fileValue, bool) {
	if v == nil || !f.inFile {
		return fileValue{}, false
	}
	fv, ok := v.scalars[f.key]
	return fv, ok
}

// readFile reads and parses the YAML config file at path.
func readFile(path string) (*fileValues, error) {
	fail := func(err error) error {
		return &FieldError{Field: configKey, Msg: err.Error(), err: err}
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fail(err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxFileBytes+1))
	if err != nil {
		return nil, fail(err)
	}
	if len(data) > maxFileBytes {
		return nil, fail(fmt.Errorf("%s: larger than %d bytes", path, maxFileBytes))
	}
	return parseFile(path, data)
}

// parseFile reads one YAML document whose top level maps the known keys
// (fields with inFile, plus breakers and upstreams) to values. It rejects
// unknown and duplicate keys, as yaml.v3's KnownFields(true) would, but
// names the key and line in a one-line message. Scalars are kept as text
// and parsed later like environment and flag values, so "2s" means the same
// in every source. A null value counts as absent.
func parseFile(path string, data []byte) (*fileValues, error) {
	root, err := decodeOne(data)
	if err != nil {
		return nil, &FieldError{Field: configKey, Msg: path + ": " + err.Error(), err: err}
	}
	out := &fileValues{scalars: make(map[string]fileValue)}
	if root == nil || isNull(root) {
		return out, nil // empty file: all defaults
	}
	if root.Kind != yaml.MappingNode {
		return nil, &FieldError{Field: configKey, Msg: fmt.Sprintf(
			"%s line %d: the top level must be a mapping of settings, got a YAML %s", path, root.Line, kindName(root.Kind))}
	}

	known := make(map[string]field)
	var keys []string
	for _, f := range fields() {
		if f.inFile {
			known[f.key] = f
			keys = append(keys, f.key)
		}
	}
	keys = append(keys, "breakers", "upstreams", "events", "outbox")
	slices.Sort(keys)

	seen := make(map[string]int) // key -> line
	for i := 0; i+1 < len(root.Content); i += 2 {
		k, v := root.Content[i], resolve(root.Content[i+1])
		where := fmt.Sprintf("%s line %d", path, k.Line)
		if k.Kind != yaml.ScalarNode {
			return nil, &FieldError{Field: configKey, Msg: fmt.Sprintf("%s: keys must be plain names, got a YAML %s", where, kindName(k.Kind))}
		}
		name := k.Value
		if prev, dup := seen[name]; dup {
			return nil, &FieldError{Field: fieldName(name), Msg: fmt.Sprintf("duplicate key in %s (first at line %d)", where, prev)}
		}
		seen[name] = k.Line

		if name == "events" {
			out.events = v
			continue
		}
		if name == "outbox" {
			out.outbox = v
			continue
		}
		if name == "breakers" || name == "upstreams" {
			m, err := namedMapping(v)
			if err != nil {
				return nil, &FieldError{Field: name, Msg: fmt.Sprintf("%s (from %s)", err, where), err: err}
			}
			if name == "breakers" {
				out.breakers = m
			} else {
				out.upstreams = m
			}
			continue
		}
		if _, ok := known[name]; !ok {
			msg := "unknown key in " + where
			if alt := strings.ReplaceAll(name, "-", "_"); alt != name && (known[alt].key != "" || alt == "breakers" || alt == "upstreams") {
				msg += fmt.Sprintf(" (did you mean %s?)", alt)
			} else if name == configKey {
				msg += " (the config file is chosen only by --config or SIDECAR_CONFIG)"
			} else {
				msg += " (known keys: " + strings.Join(keys, ", ") + ")"
			}
			return nil, &FieldError{Field: fieldName(name), Msg: msg}
		}
		if isNull(v) {
			continue
		}
		if v.Kind != yaml.ScalarNode {
			return nil, &FieldError{Field: name, Msg: fmt.Sprintf("must be a single value, got a YAML %s (from %s)", kindName(v.Kind), where)}
		}
		out.scalars[name] = fileValue{text: v.Value, line: v.Line}
	}
	return out, nil
}

// decodeOne parses data as at most one YAML document and returns its root
// node (nil for an empty file). A panic in the YAML parser becomes an error,
// so no input can crash the sidecar.
func decodeOne(data []byte) (root *yaml.Node, err error) {
	defer func() {
		if r := recover(); r != nil {
			root, err = nil, fmt.Errorf("YAML parser failed: %v", r)
		}
	}()
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, nil
		}
		return nil, err
	}
	var extra yaml.Node
	switch err := dec.Decode(&extra); {
	case errors.Is(err, io.EOF):
	case err != nil:
		return nil, err
	default:
		return nil, fmt.Errorf("line %d: holds a second YAML document; want one", extra.Line)
	}
	if doc.Kind == yaml.DocumentNode {
		if len(doc.Content) == 0 {
			return nil, nil
		}
		return resolve(doc.Content[0]), nil
	}
	return resolve(&doc), nil
}

// namedMapping turns a mapping of name -> anything into a map of raw nodes.
// A null value means no entries.
func namedMapping(n *yaml.Node) (map[string]yaml.Node, error) {
	if isNull(n) {
		return nil, nil
	}
	if n.Kind != yaml.MappingNode {
		return nil, fmt.Errorf("must be a mapping of names to settings, got a YAML %s", kindName(n.Kind))
	}
	m := make(map[string]yaml.Node, len(n.Content)/2)
	for i := 0; i+1 < len(n.Content); i += 2 {
		k := n.Content[i]
		if k.Kind != yaml.ScalarNode || isNull(k) {
			return nil, fmt.Errorf("line %d: names must be plain strings", k.Line)
		}
		if _, dup := m[k.Value]; dup {
			return nil, fmt.Errorf("line %d: duplicate name %s", k.Line, quoteValue(k.Value))
		}
		m[k.Value] = *resolve(n.Content[i+1])
	}
	return m, nil
}

// resolve follows an alias to the node it names.
func resolve(n *yaml.Node) *yaml.Node {
	for i := 0; n != nil && n.Kind == yaml.AliasNode && n.Alias != nil && i < 100; i++ {
		n = n.Alias
	}
	return n
}

func isNull(n *yaml.Node) bool {
	return n == nil || n.Kind == 0 || (n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null")
}

// fieldName spells a file key for FieldError.Field: as is when it is a
// plain name, quoted otherwise.
func fieldName(key string) string {
	if key == "" {
		return `""`
	}
	for i := 0; i < len(key); i++ {
		b := key[i]
		if !(b >= 'a' && b <= 'z' || b >= 'A' && b <= 'Z' || b >= '0' && b <= '9' || b == '_' || b == '-' || b == '.') {
			return quoteValue(key)
		}
	}
	return key
}
