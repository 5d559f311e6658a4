package config

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/seed-a88e5317/resilience-sidecar/internal/config/field"
)

// Load builds the Config from args (the command line without the program
// name), the environment read through getenv, and the YAML file named by
// --config or SIDECAR_CONFIG, in the precedence flag > environment > file >
// default. A flag given explicitly wins even when it equals the default; an
// environment variable counts as set when non-empty.
//
// Each value is parsed in every source that gives it, so a malformed value
// (SIDECAR_STORE_TIMEOUT=abc) is an error even when a higher source
// overrides it; bounds are checked once, on the merged values. Relative
// paths are relative to the working directory.
//
// When args ask for help (-h, -help, --help) Load writes the usage to
// usageOut and returns flag.ErrHelp. Every other error is a *FieldError.
// A nil getenv means an empty environment; a nil usageOut discards the usage.
func Load(args []string, getenv func(string) string, usageOut io.Writer) (*Config, error) {
	if getenv == nil {
		getenv = func(string) string { return "" }
	}
	c := &Config{}
	rows := settings(c)
	fset := flag.NewFlagSet("sidecar", flag.ContinueOnError)
	fset.SetOutput(io.Discard) // Load reports errors itself, in one line
	fset.Usage = func() {}
	for _, s := range rows {
		fset.String(s.flagName(), s.def, s.usage)
	}
	switch err := fset.Parse(args); {
	case errors.Is(err, flag.ErrHelp):
		if usageOut != nil {
			writeUsage(usageOut, rows)
		}
		return nil, flag.ErrHelp
	case err != nil:
		return nil, &FieldError{Field: "flags", Msg: err.Error() + " (see --help)", err: err}
	case fset.NArg() > 0:
		return nil, &FieldError{Field: "flags", Msg: fmt.Sprintf(
			"unexpected argument %s: every setting is a --flag (see --help)", field.Quote(fset.Arg(0)))}
	}
	flags := map[string]string{}
	fset.Visit(func(f *flag.Flag) { flags[f.Name] = f.Value.String() })

	var file map[string]*yaml.Node // the file's values by top-level key
	sources := map[string]string{} // where each value came from; absent for defaults
	apply := func(s setting, text, source string) error {
		if err := s.set(text); err != nil {
			return &FieldError{Field: s.key, Msg: err.Error() + " (from " + source + ")", err: err}
		}
		sources[s.key] = source
		return nil
	}
	layer := func(s setting) (err error) { // default, file, environment, flag: the last given wins
		if err := s.set(s.def); err != nil {
			panic("config: bad default of " + s.key + ": " + err.Error())
		}
		if n := file[s.key]; n != nil {
			err = apply(s, n.Value, fmt.Sprintf("%s line %d", c.ConfigFile, n.Line))
		}
		if v := getenv(s.envName()); v != "" && err == nil {
			err = apply(s, v, s.envName())
		}
		if v, ok := flags[s.flagName()]; ok && err == nil {
			err = apply(s, v, "--"+s.flagName())
		}
		return err
	}
	if err := layer(rows[0]); err != nil { // config, which names the file
		return nil, err
	}
	if c.ConfigFile != "" {
		var err error
		if file, err = readFile(c, rows[1:]); err != nil {
			return nil, err
		}
	}
	for _, s := range rows[1:] {
		if err := layer(s); err != nil {
			return nil, err
		}
	}
	for _, s := range rows {
		if s.check == nil {
			continue
		}
		if err := s.check(); err != nil {
			msg := err.Error()
			if src, ok := sources[s.key]; ok {
				msg += " (from " + src + ")"
			}
			return nil, &FieldError{Field: s.key, Msg: msg, err: err}
		}
	}
	return c, nil
}

// writeUsage prints the flags with their defaults and environment variables.
func writeUsage(w io.Writer, rows []setting) {
	var b strings.Builder
	b.WriteString("Usage: sidecar [flags]\n\n")
	b.WriteString("Every flag --some-name can also be set by the environment variable\n")
	b.WriteString("SIDECAR_SOME_NAME or by the key some_name in the YAML file given by --config\n")
	b.WriteString("(except --config itself). A flag beats the environment, which beats the file.\n\n")
	b.WriteString("Flags:\n")
	for _, s := range rows {
		fmt.Fprintf(&b, "  --%s %s\n    \t%s\n    \t(", s.flagName(), s.typ, s.usage)
		if s.def != "" {
			fmt.Fprintf(&b, "default %q; ", s.def)
		}
		fmt.Fprintf(&b, "env %s)\n", s.envName())
	}
	b.WriteString("  -h, --help\n    \tprint this help\n")
	_, _ = io.WriteString(w, b.String())
}
