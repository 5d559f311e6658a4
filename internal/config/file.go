package config

import (
	"bytes"
	"cmp"
	"encoding"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/seed-a88e5317/resilience-sidecar/internal/config/field"
)

// maxFileBytes bounds how much of the config file is read.
const maxFileBytes = 1 << 20

// readFile reads c.ConfigFile: one YAML document mapping the keys of rows
// and of the sections (Config's yaml-tagged fields) to values. It decodes
// the sections into c (see decoder) and returns the values of rows the
// file gives, as text to be parsed like environment and flag values ("2s"
// means the same in each); a null value counts as absent.
//
// yaml.v3's own decoding will not do: even with KnownFields its errors
// name a line but no setting, it truncates 2.5 into an int and refuses "3",
// and a custom unmarshaler's Node.Decode drops KnownFields.
func readFile(c *Config, rows []setting) (map[string]*yaml.Node, error) {
	fail := func(err error) error { return &FieldError{Field: configKey, Msg: err.Error(), err: err} }
	f, err := os.Open(c.ConfigFile)
	if err != nil {
		return nil, fail(err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxFileBytes+1))
	if err == nil && len(data) > maxFileBytes {
		err = fmt.Errorf("%s: larger than %d bytes", c.ConfigFile, maxFileBytes)
	}
	if err != nil {
		return nil, fail(err)
	}
	root, err := parseYAML(data)
	switch {
	case err != nil:
		return nil, fail(fmt.Errorf("%s: %w", c.ConfigFile, err))
	case isNull(root):
		return nil, nil // empty file: all defaults
	case root.Kind != yaml.MappingNode:
		return nil, fail(fmt.Errorf("%s line %d: the top level must be a mapping of settings, got a YAML %s", c.ConfigFile, root.Line, kindName(root.Kind)))
	}
	d := &decoder{file: c.ConfigFile, lines: map[string]int{}, top: map[string]*yaml.Node{}}
	keys := structKeys(reflect.TypeFor[Config](), nil, map[string]*key{})
	for _, s := range rows {
		keys[s.key] = &key{}
	}
	if err := d.mapping(root, reflect.Value{}, "", keys); err != nil {
		return nil, err
	}
	// The sections in the order of Config's fields: each may name what
	// those before it declare.
	for i, t := 0, reflect.TypeFor[Config](); i < t.NumField(); i++ {
		if key := t.Field(i).Tag.Get("yaml"); key != "" && d.top[key] != nil {
			if err := d.section(d.top[key], reflect.ValueOf(c).Elem().Field(i), key); err != nil {
				return nil, err
			}
			if err := d.references(c, key); err != nil {
				return nil, err
			}
		}
	}
	return d.top, nil
}

// decoder decodes the file's sections into the capability packages'
// Config types by their yaml tags, strictly: an unknown or duplicate key, a
// value of the wrong shape or a scalar that does not parse is an error
// naming the setting by its path and the file's line. Tags: the key; "-"
// skips a field; ",inline" merges an embedded struct's keys; a dotted key
// (retry.max_attempts) is a key of a nested mapping; a slice or map tagged
// item:"topic" is a list of them, and such a map of names may also be
// written as a list of its names. Scalars are read as TextUnmarshaler,
// time.Duration (Go syntax), string, bool, integer or float.
type decoder struct {
	file      string
	lines     map[string]int        // path of every value the file wrote -> its line
	top       map[string]*yaml.Node // the top-level values by key
	unsetOnly bool                  // decode sets only the scalars that may mean "not set"
}

// errorf returns the *FieldError of the setting at path, from line.
func (d *decoder) errorf(path string, line int, format string, args ...any) error {
	return &FieldError{Field: path, Msg: fmt.Sprintf(format, args...) + fmt.Sprintf(" (from %s line %d)", d.file, line)}
}

// lineOf returns the line of the setting at path or, when the file did not
// write it, of the nearest setting holding it.
func (d *decoder) lineOf(path string) int {
	for d.lines[path] == 0 {
		i := strings.LastIndexAny(path, ".[")
		if i < 0 {
			return 0
		}
		path = path[:i]
	}
	return d.lines[path]
}

// section decodes the section n at path into v, fills in its defaults
// (v.WithDefaults) and validates it (v.ValidateFile(written) or
// v.Validate). A setting the file wrote as a value meaning "not set" (zero,
// or a negative number) is set again after the defaults, for validation to
// refuse it: written out, `half_open_max_calls: 0` is an error, not 1.
func (d *decoder) section(n *yaml.Node, v reflect.Value, path string) error {
	if err := d.decode(n, v, path, ""); err != nil {
		return err
	}
	if m := v.MethodByName("WithDefaults"); m.IsValid() {
		v.Set(m.Call(nil)[0])
		d.unsetOnly = true
		err := d.decode(n, v, path, "") // parsed once already: cannot fail
		d.unsetOnly = false
		if err != nil {
			return err
		}
	}
	var err error
	switch s := v.Interface().(type) {
	case interface {
		ValidateFile(written func(path string) bool) error
	}:
		err = s.ValidateFile(func(p string) bool { return d.lines[field.Join(path, p)] > 0 })
	case interface{ Validate() error }:
		err = s.Validate()
	}
	if err == nil {
		return nil
	}
	fe := &field.Error{Msg: err.Error()}
	errors.As(err, &fe)
	p := field.Join(path, fe.Path)
	return d.errorf(p, d.lineOf(p), "%s", fe.Msg)
}

// references checks what the section at key names in those before it:
// an upstream's breaker, when written, must be declared under breakers,
// and a push subscription's upstream under upstreams.
func (d *decoder) references(c *Config, key string) error {
	switch key {
	case "upstreams":
		for _, name := range slices.Sorted(maps.Keys(c.Upstreams)) {
			p, b := "upstreams."+field.Key(name)+".breaker", c.Upstreams[name].Breaker
			if _, declared := c.Breakers[b]; !declared && d.lines[p] > 0 {
				return d.errorf(p, d.lines[p], "breaker %s is not declared under breakers (leave breaker out to use one named after the upstream)", field.Quote(b))
			}
		}
	case "events":
		for i, p := range c.Events.Push {
			if _, ok := c.Upstreams[p.Upstream]; !ok {
				path := fmt.Sprintf("events.push[%d].upstream", i)
				return d.errorf(path, d.lineOf(path), "unknown upstream %s (declared: %s)",
					field.Quote(p.Upstream), strings.Join(slices.Sorted(maps.Keys(c.Upstreams)), ", "))
			}
		}
	}
	return nil
}

func (d *decoder) decode(n *yaml.Node, v reflect.Value, path, item string) error {
	n = resolve(n)
	d.lines[path] = n.Line
	switch {
	case isNull(n):
		return nil
	case v.Kind() == reflect.Struct:
		return d.mapping(n, v, path, structKeys(v.Type(), nil, map[string]*key{}))
	case v.Kind() == reflect.Map:
		return d.names(n, v, path, item)
	case v.Kind() == reflect.Slice:
		return d.list(n, v, path, item)
	case n.Kind != yaml.ScalarNode:
		return d.errorf(path, n.Line, "must be a single value, got a YAML %s", kindName(n.Kind))
	}
	x := reflect.New(v.Type()).Elem()
	if err := parseScalar(n.Value, x); err != nil {
		return d.errorf(path, n.Line, "%v", err)
	}
	// In the second pass, only a value WithDefaults may have replaced as
	// "not set": zero, or a negative number.
	if !d.unsetOnly || x.IsZero() || x.CanInt() && x.Int() < 0 || x.CanFloat() && x.Float() < 0 {
		v.Set(x)
	}
	return nil
}

// key is a key of a mapping decoded into a struct: a field, the head of
// dotted keys (whose nested mapping holds the rest), or, with neither, a
// top-level setting (a row of settings()).
type key struct {
	index []int
	item  string          // the field's item tag
	sub   map[string]*key // the rest of the dotted keys
}

// structKeys adds to keys those of the settings of struct type t, whose
// fields are at prefix in the struct decoded into.
func structKeys(t reflect.Type, prefix []int, keys map[string]*key) map[string]*key {
	for i := range t.NumField() {
		f, index := t.Field(i), append(slices.Clone(prefix), i)
		name, opts, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if opts == "inline" {
			structKeys(f.Type, index, keys)
			continue
		} else if name == "" || name == "-" {
			continue
		}
		m, parts := keys, strings.Split(name, ".")
		for _, p := range parts[:len(parts)-1] {
			if m[p] == nil {
				m[p] = &key{sub: map[string]*key{}}
			}
			m = m[p].sub
		}
		m[parts[len(parts)-1]] = &key{index: index, item: f.Tag.Get("item")}
	}
	return keys
}

// mapping decodes a mapping of settings into struct v or, when path is
// "", checks the file's top level and keeps its values in d.top.
func (d *decoder) mapping(n *yaml.Node, v reflect.Value, path string, keys map[string]*key) error {
	if n.Kind != yaml.MappingNode {
		return d.errorf(path, n.Line, "must be a mapping of settings, got a YAML %s", kindName(n.Kind))
	}
	known, seen := slices.Sorted(maps.Keys(keys)), map[string]int{} // key -> line
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := n.Content[i], resolve(n.Content[i+1])
		p, ref := field.Join(path, field.Key(k.Value)), keys[k.Value]
		alt := strings.ReplaceAll(k.Value, "-", "_")
		switch {
		case k.Kind != yaml.ScalarNode:
			return d.errorf(cmp.Or(path, configKey), k.Line, "keys must be plain names, got a YAML %s", kindName(k.Kind))
		case seen[k.Value] > 0:
			return d.errorf(p, k.Line, "duplicate key (first at line %d)", seen[k.Value])
		case ref != nil:
		case path == "" && alt != k.Value && keys[alt] != nil:
			return d.errorf(p, k.Line, "unknown key (did you mean %s?)", alt)
		case path == "" && k.Value == configKey:
			return d.errorf(p, k.Line, "unknown key (the config file is chosen only by --config or SIDECAR_CONFIG)")
		default:
			return d.errorf(p, k.Line, "unknown key (known keys: %s)", strings.Join(known, ", "))
		}
		seen[k.Value] = k.Line
		var err error
		switch {
		case isNull(val):
		case path == "" && ref.index == nil && val.Kind != yaml.ScalarNode:
			return d.errorf(p, k.Line, "must be a single value, got a YAML %s", kindName(val.Kind))
		case path == "":
			d.top[k.Value] = val // a section is decoded after the top level is checked
		case ref.sub != nil:
			d.lines[p] = val.Line
			err = d.mapping(val, v, p, ref.sub)
		default:
			err = d.decode(val, v.FieldByIndex(ref.index), p, ref.item)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// names decodes a mapping of names to settings into map v, adding to the
// entries it holds; with an item tag, a list of names also does.
func (d *decoder) names(n *yaml.Node, v reflect.Value, path, item string) error {
	step := 2
	switch {
	case n.Kind == yaml.SequenceNode && item != "":
		step = 1
	case n.Kind == yaml.MappingNode:
	case item != "":
		return d.errorf(path, n.Line, "must be a list of %s names or a mapping of names to settings, got a YAML %s", item, kindName(n.Kind))
	default:
		return d.errorf(path, n.Line, "must be a mapping of names to settings, got a YAML %s", kindName(n.Kind))
	}
	if v.IsNil() {
		v.Set(reflect.MakeMap(v.Type()))
	}
	seen := map[string]int{} // name -> line
	for i := 0; i+step <= len(n.Content); i += step {
		k, val := n.Content[i], &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!null", Line: n.Content[i].Line}
		if step == 1 {
			k = resolve(k)
		} else {
			val = n.Content[i+1]
		}
		p := field.Join(path, field.Key(k.Value))
		switch {
		case k.Kind != yaml.ScalarNode || item == "" && isNull(k):
			return d.errorf(path, k.Line, "%s must be plain strings, got a YAML %s", strings.TrimSpace(item+" names"), kindName(k.Kind))
		case seen[k.Value] > 0 && item != "":
			return d.errorf(p, k.Line, "duplicate %s (first at line %d)", item, seen[k.Value])
		case seen[k.Value] > 0:
			return d.errorf(path, k.Line, "duplicate name %s (first at line %d)", field.Quote(k.Value), seen[k.Value])
		}
		seen[k.Value] = k.Line
		name := reflect.ValueOf(k.Value).Convert(v.Type().Key())
		e := reflect.New(v.Type().Elem()).Elem()
		if old := v.MapIndex(name); old.IsValid() {
			e.Set(old)
		}
		if err := d.decode(val, e, p, ""); err != nil {
			return err
		}
		v.SetMapIndex(name, e)
	}
	return nil
}

// list decodes a list into slice v, each item over the one v holds at its
// index.
func (d *decoder) list(n *yaml.Node, v reflect.Value, path, item string) error {
	if n.Kind != yaml.SequenceNode {
		return d.errorf(path, n.Line, "must be a list of %ss, got a YAML %s", cmp.Or(item, "value"), kindName(n.Kind))
	}
	if len(n.Content) == 0 {
		return nil
	}
	out := reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content))
	reflect.Copy(out, v)
	for i, c := range n.Content {
		if err := d.decode(c, out.Index(i), fmt.Sprintf("%s[%d]", path, i), ""); err != nil {
			return err
		}
	}
	v.Set(out)
	return nil
}

// yamlFloats are YAML's spellings of the special floats.
var yamlFloats = map[string]float64{".nan": math.NaN(), ".inf": math.Inf(1), "+.inf": math.Inf(1), "-.inf": math.Inf(-1)}

// parseScalar parses s into v, which must be addressable. Its errors say
// what was expected, without the key.
func parseScalar(s string, v reflect.Value) (err error) {
	switch p := v.Addr().Interface().(type) {
	case encoding.TextUnmarshaler:
		return p.UnmarshalText([]byte(s))
	case *time.Duration:
		*p, err = parseDuration(s)
		return err
	}
	switch {
	case v.Kind() == reflect.String:
		v.SetString(s)
	case v.Kind() == reflect.Bool:
		b, err := parseBool(s)
		v.SetBool(b)
		return err
	case v.CanInt():
		i, err := strconv.ParseInt(s, 10, v.Type().Bits())
		if err != nil {
			return fmt.Errorf("must be a whole number, got %s", field.Quote(s))
		}
		v.SetInt(i)
	case v.CanFloat():
		f, err := strconv.ParseFloat(s, v.Type().Bits())
		if yf, ok := yamlFloats[strings.ToLower(s)]; ok {
			f, err = yf, nil
		}
		if err != nil {
			return fmt.Errorf("must be a number, got %s", field.Quote(s))
		}
		v.SetFloat(f)
	default:
		return fmt.Errorf("cannot hold a %s (internal error)", v.Type())
	}
	return nil
}

// parseYAML parses data as at most one YAML document and returns its root
// node (nil for an empty file). A panic in the YAML parser becomes an error,
// so no input can crash the sidecar.
func parseYAML(data []byte) (root *yaml.Node, err error) {
	defer func() {
		if r := recover(); r != nil {
			root, err = nil, fmt.Errorf("YAML parser failed: %v", r)
		}
	}()
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc, extra yaml.Node
	if err := dec.Decode(&doc); errors.Is(err, io.EOF) || err == nil && len(doc.Content) == 0 {
		return nil, nil
	} else if err != nil {
		return nil, err
	}
	if err := dec.Decode(&extra); err == nil {
		return nil, fmt.Errorf("line %d: holds a second YAML document; want one", extra.Line)
	} else if !errors.Is(err, io.EOF) {
		return nil, err
	}
	return resolve(doc.Content[0]), nil
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
	names := map[yaml.Kind]string{yaml.MappingNode: "mapping", yaml.SequenceNode: "sequence", yaml.DocumentNode: "document", yaml.AliasNode: "alias"}
	return cmp.Or(names[k], "scalar")
}
