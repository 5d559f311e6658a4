package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"slices"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/seed-a88e5317/resilience-sidecar/internal/config/field"
)

// maxFileBytes bounds how much of the config file is read.
const maxFileBytes = 1 << 20

// fileValue is one top-level value of the file: a setting's text, or a
// section's YAML.
type fileValue struct {
	text string
	node *yaml.Node
	line int // of the key
}

// fileValues is what the config file sets, by top-level key.
type fileValues struct {
	path     string
	scalars  map[string]fileValue
	sections map[string]fileValue
}

// lookup returns the file's value for f; a nil *fileValues (no file) has none.
func (v *fileValues) lookup(f setting) (fileValue, bool) {
	if v == nil || !f.inFile {
		return fileValue{}, false
	}
	fv, ok := v.scalars[f.key]
	return fv, ok
}

// sectionKeys are the file's sections: the yaml-tagged fields of Config.
var sectionKeys = structKeys(reflect.TypeFor[Config]())

// decodeSections decodes the file's sections into c (see decoder), in the
// order of Config's fields, checking each and what it names in the ones
// before.
func (v *fileValues) decodeSections(c *Config) error {
	d := &decoder{file: v.path, lines: map[string]int{}}
	t := reflect.TypeFor[Config]()
	for i := range t.NumField() {
		key, _, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ",")
		s, ok := v.sections[key]
		if !ok {
			continue
		}
		ref := sectionKeys[key]
		if err := d.section(s.node, reflect.ValueOf(c).Elem().Field(i), key, s.line, ref.item); err != nil {
			return err
		}
		if err := d.references(c, key); err != nil {
			return err
		}
	}
	return nil
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
// (the settings the file may give, and the sections) to values. It rejects
// unknown and duplicate keys, naming the key and line in a one-line
// message. Settings are kept as text and parsed later like environment and
// flag values, so "2s" means the same in every source. A null value counts
// as absent.
func parseFile(path string, data []byte) (*fileValues, error) {
	root, err := decodeOne(data)
	if err != nil {
		return nil, &FieldError{Field: configKey, Msg: path + ": " + err.Error(), err: err}
	}
	out := &fileValues{path: path, scalars: map[string]fileValue{}, sections: map[string]fileValue{}}
	if root == nil || isNull(root) {
		return out, nil // empty file: all defaults
	}
	if root.Kind != yaml.MappingNode {
		return nil, &FieldError{Field: configKey, Msg: fmt.Sprintf(
			"%s line %d: the top level must be a mapping of settings, got a YAML %s", path, root.Line, kindName(root.Kind))}
	}

	known := map[string]bool{}
	for _, f := range settings() {
		known[f.key] = f.inFile
	}
	for k := range sectionKeys {
		known[k] = true
	}
	keys := slices.Sorted(func(yield func(string) bool) {
		for k, ok := range known {
			if ok && !yield(k) {
				return
			}
		}
	})

	seen := map[string]int{} // key -> line
	for i := 0; i+1 < len(root.Content); i += 2 {
		k, v := root.Content[i], resolve(root.Content[i+1])
		where := fmt.Sprintf("%s line %d", path, k.Line)
		if k.Kind != yaml.ScalarNode {
			return nil, &FieldError{Field: configKey, Msg: fmt.Sprintf("%s: keys must be plain names, got a YAML %s", where, kindName(k.Kind))}
		}
		name := k.Value
		if prev, dup := seen[name]; dup {
			return nil, &FieldError{Field: field.Key(name), Msg: fmt.Sprintf("duplicate key in %s (first at line %d)", where, prev)}
		}
		seen[name] = k.Line
		if !known[name] {
			msg := "unknown key in " + where
			if alt := strings.ReplaceAll(name, "-", "_"); alt != name && known[alt] {
				msg += fmt.Sprintf(" (did you mean %s?)", alt)
			} else if name == configKey {
				msg += " (the config file is chosen only by --config or SIDECAR_CONFIG)"
			} else {
				msg += " (known keys: " + strings.Join(keys, ", ") + ")"
			}
			return nil, &FieldError{Field: field.Key(name), Msg: msg}
		}
		switch {
		case isNull(v):
		case sectionKeys[name] != nil:
			out.sections[name] = fileValue{node: v, line: k.Line}
		case v.Kind != yaml.ScalarNode:
			return nil, &FieldError{Field: name, Msg: fmt.Sprintf("must be a single value, got a YAML %s (from %s)", kindName(v.Kind), where)}
		default:
			out.scalars[name] = fileValue{text: v.Value, line: v.Line}
		}
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

func kindName(k yaml.Kind) string {
	switch k {
	case yaml.MappingNode:
		return "mapping"
	case yaml.SequenceNode:
		return "sequence"
	case yaml.DocumentNode:
		return "document"
	case yaml.AliasNode:
		return "alias"
	default:
		return "scalar"
	}
}
