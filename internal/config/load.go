package config

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"

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
	if usageOut == nil {
		usageOut = io.Discard
	}
	specs := settings()

	fset := flag.NewFlagSet("sidecar", flag.ContinueOnError)
	fset.SetOutput(io.Discard) // Load reports errors itself, in one line
	fset.Usage = func() {}
	for _, f := range specs {
		fset.String(f.flagName(), f.def, f.usage)
	}
	if err := fset.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			writeUsage(usageOut, specs)
			return nil, flag.ErrHelp
		}
		return nil, &FieldError{Field: "flags", Msg: err.Error() + " (see --help)", err: err}
	}
	if fset.NArg() > 0 {
		return nil, &FieldError{Field: "flags", Msg: fmt.Sprintf(
			"unexpected argument %s: every setting is a --flag (see --help)", field.Quote(fset.Arg(0)))}
	}
	flags := make(map[string]string)
	fset.Visit(func(fl *flag.Flag) { flags[fl.Name] = fl.Value.String() })

	c := &Config{}
	sources := make(map[string]string) // key -> where its value came from; absent for defaults
	apply := func(f setting, text, source string) error {
		if err := f.set(c, text); err != nil {
			return &FieldError{Field: f.key, Msg: err.Error() + " (from " + source + ")", err: err}
		}
		sources[f.key] = source
		return nil
	}
	// applyAbove applies the environment, then the flag, over what c holds.
	applyAbove := func(f setting) error {
		if v := getenv(f.envName()); v != "" {
			if err := apply(f, v, f.envName()); err != nil {
				return err
			}
		}
		if v, ok := flags[f.flagName()]; ok {
			return apply(f, v, "--"+f.flagName())
		}
		return nil
	}

	for _, f := range specs {
		if err := f.set(c, f.def); err != nil {
			return nil, &FieldError{Field: f.key, Msg: "internal error: bad default: " + err.Error(), err: err}
		}
	}

	var file *fileValues
	for _, f := range specs {
		if f.key == configKey {
			if err := applyAbove(f); err != nil {
				return nil, err
			}
		}
	}
	if c.ConfigFile != "" {
		var err error
		if file, err = readFile(c.ConfigFile); err != nil {
			return nil, err
		}
		if err := file.decodeSections(c); err != nil {
			return nil, err
		}
	}

	for _, f := range specs {
		if f.key == configKey {
			continue
		}
		if v, ok := file.lookup(f); ok {
			if err := apply(f, v.text, fmt.Sprintf("%s line %d", c.ConfigFile, v.line)); err != nil {
				return nil, err
			}
		}
		if err := applyAbove(f); err != nil {
			return nil, err
		}
	}

	for _, f := range specs {
		if f.check == nil {
			continue
		}
		if err := f.check(c); err != nil {
			msg := err.Error()
			if src, ok := sources[f.key]; ok {
				msg += " (from " + src + ")"
			}
			return nil, &FieldError{Field: f.key, Msg: msg, err: err}
		}
	}
	return c, nil
}

// writeUsage prints the flags with their defaults and environment variables.
func writeUsage(w io.Writer, specs []setting) {
	var b strings.Builder
	b.WriteString("Usage: sidecar [flags]\n\n")
	b.WriteString("Every flag --some-name can also be set by the environment variable\n")
	b.WriteString("SIDECAR_SOME_NAME or by the key some_name in the YAML file given by --config\n")
	b.WriteString("(except --config itself). A flag beats the environment, which beats the file.\n\n")
	b.WriteString("Flags:\n")
	for _, f := range specs {
		fmt.Fprintf(&b, "  --%s %s\n    \t%s\n    \t(", f.flagName(), f.typ, f.usage)
		if f.def != "" {
			fmt.Fprintf(&b, "default %q; ", f.def)
		}
		fmt.Fprintf(&b, "env %s)\n", f.envName())
	}
	b.WriteString("  -h, --help\n    \tprint this help\n")
	_, _ = io.WriteString(w, b.String())
}
