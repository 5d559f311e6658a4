package config

import (
	"cmp"
	"encoding"
	"errors"
	"fmt"
	"maps"
	"math"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/seed-a88e5317/resilience-sidecar/internal/config/field"
)

// decoder decodes the file's sections into the capability packages'
// configuration types by their yaml tags, strictly: an unknown or
// duplicate key, a value of the wrong shape or a scalar that does not parse
// is an error naming the setting by its path and the file's line. (yaml.v3's
// own decoder, even with KnownFields, names neither, and Node.Decode ignores
// KnownFields.)
//
// A struct field is a setting when it has a yaml tag: its key; "-" to skip
// it; ",inline" for an embedded struct whose settings are the struct's
// own. A dotted key (retry.max_attempts) is a key of a nested mapping. A
// list tagged item:"push subscription" is a list of them; a map of names
// so tagged may also be written as a list of its names, and one without an
// item tag is a mapping of names to settings. Scalars are read as
// encoding.TextUnmarshaler, time.Duration (Go syntax), string, bool,
// integer (base 10) or float, in that order. A null value is left out.
type decoder struct {
	file string
	// lines maps the path of every setting the file wrote (and of every
	// mapping and list holding one) to the line of its value.
	lines map[string]int
	// unsetOnly makes decode set only the scalars whose value may mean
	// "not set" (see unset): the second pass of section.
	unsetOnly bool
}

// section decodes the section n at path into v, fills in its defaults and
// validates it. The defaults come from v's WithDefaults method, given the
// section as written so that a default may depend on other settings. A
// setting the file wrote as a value that means "not set" (zero, or a
// negative number) keeps it for v's Validate to judge: written out,
// `half_open_max_calls: 0` is refused, not defaulted. Other written values
// are WithDefaults' to normalise (upper-case a method). Validation is
// ValidateFile(written) when v's type has it, else Validate.
func (d *decoder) section(n *yaml.Node, v reflect.Value, path string, keyLine int, item string) error {
	if err := d.decode(n, v, path, keyLine, item); err != nil {
		return err
	}
	if m := v.MethodByName("WithDefaults"); m.IsValid() {
		v.Set(m.Call(nil)[0])
		d.unsetOnly = true
		err := d.decode(n, v, path, keyLine, item) // parsed once already: cannot fail
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
		err = s.ValidateFile(func(p string) bool { return d.wrote(field.Join(path, p)) })
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

// wrote reports whether the file wrote the setting at path.
func (d *decoder) wrote(path string) bool {
	_, ok := d.lines[path]
	return ok
}

// errorf returns the *FieldError of the setting at path, from line.
func (d *decoder) errorf(path string, line int, format string, args ...any) error {
	return &FieldError{Field: path, Msg: fmt.Sprintf(format, args...) + fmt.Sprintf(" (from %s line %d)", d.file, line)}
}

// lineOf returns the line of the setting at path or, when the file did not
// write it, of the nearest setting holding it.
func (d *decoder) lineOf(path string) int {
	for {
		if line, ok := d.lines[path]; ok {
			return line
		}
		i := strings.LastIndexAny(path, ".[")
		if i < 0 {
			return 0
		}
		path = path[:i]
	}
}

func (d *decoder) decode(n *yaml.Node, v reflect.Value, path string, keyLine int, item string) error {
	n = resolve(n)
	if !d.unsetOnly {
		d.lines[path] = n.Line
	}
	if isNull(n) {
		return nil
	}
	switch v.Kind() {
	case reflect.Struct:
		return d.mapping(n, v, path, structKeys(v.Type()))
	case reflect.Map:
		return d.names(n, v, path, keyLine, item)
	case reflect.Slice:
		return d.list(n, v, path, item)
	}
	if n.Kind != yaml.ScalarNode {
		return d.errorf(path, n.Line, "must be a single value, got a YAML %s", kindName(n.Kind))
	}
	x := reflect.New(v.Type()).Elem()
	if err := parseScalar(n.Value, x); err != nil {
		return d.errorf(path, n.Line, "%v", err)
	}
	if !d.unsetOnly || unset(x) {
		v.Set(x)
	}
	return nil
}

// unset reports whether x may be a value that WithDefaults replaces as
// "not set": zero, or a negative number.
func unset(x reflect.Value) bool {
	switch x.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return x.Int() <= 0
	case reflect.Float32, reflect.Float64:
		return x.Float() <= 0
	}
	return x.IsZero()
}

// key is a key of a mapping decoded into a struct.
type key struct {
	index []int           // the struct field of a setting
	sub   map[string]*key // the keys of the nested mapping a dotted key's head names
	item  string          // the field's item tag
}

// structKeys returns the keys of the settings of struct type t.
func structKeys(t reflect.Type) map[string]*key {
	keys := map[string]*key{}
	var add func(t reflect.Type, prefix []int)
	add = func(t reflect.Type, prefix []int) {
		for i := range t.NumField() {
			f := t.Field(i)
			tag, ok := f.Tag.Lookup("yaml")
			name, opts, _ := strings.Cut(tag, ",")
			index := append(slices.Clone(prefix), i)
			switch {
			case !ok || name == "-":
				continue
			case opts == "inline":
				add(f.Type, index)
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
	}
	add(t, nil)
	return keys
}

// mapping decodes a mapping of settings into struct v.
func (d *decoder) mapping(n *yaml.Node, v reflect.Value, path string, keys map[string]*key) error {
	if n.Kind != yaml.MappingNode {
		return d.errorf(path, n.Line, "must be a mapping of settings, got a YAML %s", kindName(n.Kind))
	}
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := n.Content[i], resolve(n.Content[i+1])
		if k.Kind != yaml.ScalarNode {
			return d.errorf(path, k.Line, "keys must be plain names, got a YAML %s", kindName(k.Kind))
		}
		ref, ok := keys[k.Value]
		if !ok {
			return d.errorf(field.Join(path, field.Key(k.Value)), k.Line, "unknown key (known keys: %s)",
				strings.Join(slices.Sorted(maps.Keys(keys)), ", "))
		}
		if seen[k.Value] {
			return d.errorf(field.Join(path, k.Value), k.Line, "duplicate key")
		}
		seen[k.Value] = true
		if isNull(val) {
			continue
		}
		p := field.Join(path, k.Value)
		var err error
		if ref.sub != nil {
			if !d.unsetOnly {
				d.lines[p] = val.Line
			}
			err = d.mapping(val, v, p, ref.sub)
		} else {
			err = d.decode(val, v.FieldByIndex(ref.index), p, k.Line, ref.item)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// names decodes a map of names to settings into map v, adding to the
// entries it holds. keyLine is the line of the key naming the map.
func (d *decoder) names(n *yaml.Node, v reflect.Value, path string, keyLine int, item string) error {
	seen := map[string]bool{}
	entry := func(k, val *yaml.Node) error {
		if !d.unsetOnly {
			switch {
			case item != "" && k.Kind != yaml.ScalarNode:
				return d.errorf(path, k.Line, "%s names must be plain strings, got a YAML %s", item, kindName(k.Kind))
			case item == "" && (k.Kind != yaml.ScalarNode || isNull(k)):
				return d.errorf(path, keyLine, "line %d: names must be plain strings", k.Line)
			case seen[k.Value] && item != "":
				return d.errorf(field.Join(path, field.Key(k.Value)), k.Line, "duplicate %s", item)
			case seen[k.Value]:
				return d.errorf(path, keyLine, "line %d: duplicate name %s", k.Line, field.Quote(k.Value))
			}
		}
		seen[k.Value] = true
		name := reflect.ValueOf(k.Value).Convert(v.Type().Key())
		e := reflect.New(v.Type().Elem()).Elem()
		if old := v.MapIndex(name); old.IsValid() {
			e.Set(old)
		}
		p := field.Join(path, field.Key(k.Value))
		if val == nil {
			if !d.unsetOnly {
				d.lines[p] = k.Line
			}
		} else if err := d.decode(val, e, p, k.Line, ""); err != nil {
			return err
		}
		v.SetMapIndex(name, e)
		return nil
	}
	switch {
	case n.Kind == yaml.SequenceNode && item != "", n.Kind == yaml.MappingNode:
	case item != "":
		return d.errorf(path, n.Line, "must be a list of %s names or a mapping of names to settings, got a YAML %s", item, kindName(n.Kind))
	default:
		return d.errorf(path, keyLine, "must be a mapping of names to settings, got a YAML %s", kindName(n.Kind))
	}
	if v.IsNil() {
		v.Set(reflect.MakeMap(v.Type()))
	}
	if n.Kind == yaml.SequenceNode {
		for _, k := range n.Content {
			if err := entry(resolve(k), nil); err != nil {
				return err
			}
		}
		return nil
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if err := entry(n.Content[i], n.Content[i+1]); err != nil {
			return err
		}
	}
	return nil
}

// list decodes a list into slice v, each item over the one v holds at its
// index.
func (d *decoder) list(n *yaml.Node, v reflect.Value, path string, item string) error {
	if n.Kind != yaml.SequenceNode {
		return d.errorf(path, n.Line, "must be a list of %ss, got a YAML %s", cmp.Or(item, "value"), kindName(n.Kind))
	}
	if len(n.Content) == 0 {
		return nil
	}
	out := reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content))
	for i, c := range n.Content {
		if i < v.Len() {
			out.Index(i).Set(v.Index(i))
		}
		if err := d.decode(c, out.Index(i), fmt.Sprintf("%s[%d]", path, i), 0, ""); err != nil {
			return err
		}
	}
	v.Set(out)
	return nil
}

var textUnmarshaler = reflect.TypeFor[encoding.TextUnmarshaler]()

// parseScalar parses s into v, which must be addressable. Its errors say
// what was expected, without the key.
func parseScalar(s string, v reflect.Value) error {
	if reflect.PointerTo(v.Type()).Implements(textUnmarshaler) {
		return v.Addr().Interface().(encoding.TextUnmarshaler).UnmarshalText([]byte(s))
	}
	if v.Type() == reflect.TypeFor[time.Duration]() {
		d, err := parseDuration(s)
		v.SetInt(int64(d))
		return err
	}
	switch v.Kind() {
	case reflect.String:
		v.SetString(s)
	case reflect.Bool:
		b, err := strconv.ParseBool(s)
		if err != nil {
			return fmt.Errorf("must be true or false, got %s", field.Quote(s))
		}
		v.SetBool(b)
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		i, err := strconv.ParseInt(s, 10, v.Type().Bits())
		if err != nil {
			return fmt.Errorf("must be a whole number, got %s", field.Quote(s))
		}
		v.SetInt(i)
	case reflect.Float32, reflect.Float64:
		f, err := strconv.ParseFloat(s, v.Type().Bits())
		switch strings.ToLower(s) { // YAML's spellings
		case ".nan":
			f, err = math.NaN(), nil
		case ".inf", "+.inf":
			f, err = math.Inf(1), nil
		case "-.inf":
			f, err = math.Inf(-1), nil
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

// references checks what the section at key names in another: an
// upstream's breaker must be declared under breakers, and a push
// subscription's upstream under upstreams.
func (d *decoder) references(c *Config, key string) error {
	switch key {
	case "upstreams":
		for _, name := range slices.Sorted(maps.Keys(c.Upstreams)) {
			p := field.Join(key, field.Join(field.Key(name), "breaker"))
			b := c.Upstreams[name].Breaker
			if _, declared := c.Breakers[b]; !declared && d.wrote(p) {
				return d.errorf(p, d.lines[p], "breaker %s is not declared under breakers (leave breaker out to use one named after the upstream)", field.Quote(b))
			}
		}
	case "events":
		for i, p := range c.Events.Push {
			if _, ok := c.Upstreams[p.Upstream]; !ok {
				path := fmt.Sprintf("%s.push[%d].upstream", key, i)
				return d.errorf(path, d.lineOf(path), "unknown upstream %s (declared: %s)",
					field.Quote(p.Upstream), strings.Join(slices.Sorted(maps.Keys(c.Upstreams)), ", "))
			}
		}
	}
	return nil
}
