// Command modzip writes a Go module in the file layout of a module proxy
// (GOPROXY=file://DIR): DIR/<module path>/@v/{list, VERSION.info,
// VERSION.mod, VERSION.zip}. The zip is made by golang.org/x/mod/zip,
// which applies the module zip rules (file names, sizes, no nested
// modules or vendor directories, ...) and fails on a file that breaks
// them, and is checked again with zip.CheckZip once written. It prints the
// zip's h1: hash, the line go.sum gets for the module.
//
// It is a module of its own, so that golang.org/x/mod is no dependency of
// the client module; clients/go/dist.sh runs it:
//
//	go run . -dir ../.. -module github.com/.../clients/go -version v0.1.0 -time 2026-12-01T00:00:00Z -out DIST
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"golang.org/x/mod/modfile"
	"golang.org/x/mod/module"
	"golang.org/x/mod/semver"
	"golang.org/x/mod/sumdb/dirhash"
	"golang.org/x/mod/zip"
)

func main() {
	dir := flag.String("dir", "", "the module's directory (holding its go.mod)")
	path := flag.String("module", "", "the module path, which the go.mod must declare")
	version := flag.String("version", "", "the version, e.g. v0.1.0")
	at := flag.String("time", "", "the version's time (RFC 3339), written to the .info file")
	out := flag.String("out", "", "the proxy directory to write into")
	flag.Parse()
	if err := run(*dir, *path, *version, *at, *out); err != nil {
		log.Fatalf("modzip: %v", err)
	}
}

func run(dir, path, version, at, out string) error {
	if dir == "" || path == "" || version == "" || at == "" || out == "" {
		return errors.New("-dir, -module, -version, -time and -out are all required")
	}
	mv := module.Version{Path: path, Version: version}
	if err := module.Check(path, version); err != nil {
		return err
	}
	if semver.Canonical(version) != version || semver.Prerelease(version) != "" {
		return fmt.Errorf("version %q is not a canonical release version", version)
	}
	t, err := time.Parse(time.RFC3339, at)
	if err != nil {
		return fmt.Errorf("-time: %w", err)
	}
	gomod, err := os.ReadFile(filepath.Join(dir, "go.mod"))
	if err != nil {
		return err
	}
	if got := modfile.ModulePath(gomod); got != path {
		return fmt.Errorf("%s/go.mod declares module %q, not %q", dir, got, path)
	}
	f, err := modfile.Parse("go.mod", gomod, nil)
	if err != nil {
		return err
	}
	if len(f.Replace) > 0 || f.Toolchain != nil {
		return errors.New("the module's go.mod must have no replace and no toolchain line: users would not get what was tested")
	}

	escaped, err := module.EscapePath(path)
	if err != nil {
		return err
	}
	vdir := filepath.Join(out, filepath.FromSlash(escaped), "@v")
	if err := os.MkdirAll(vdir, 0o755); err != nil {
		return err
	}
	zipPath := filepath.Join(vdir, version+".zip")
	tmp := zipPath + ".tmp"
	zf, err := os.Create(tmp)
	if err != nil {
		return err
	}
	err = zip.CreateFromDir(zf, mv, dir)
	if cerr := zf.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("zip %s: %w", dir, err)
	}
	if err := os.Rename(tmp, zipPath); err != nil {
		return err
	}
	cf, err := zip.CheckZip(mv, zipPath)
	if err != nil {
		return fmt.Errorf("check %s: %w", zipPath, err)
	}
	if err := cf.Err(); err != nil {
		return fmt.Errorf("check %s: %w", zipPath, err)
	}
	if err := os.WriteFile(filepath.Join(vdir, version+".mod"), gomod, 0o644); err != nil {
		return err
	}
	info, err := json.Marshal(struct {
		Version string
		Time    time.Time
	}{version, t.UTC()})
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(vdir, version+".info"), append(info, '\n'), 0o644); err != nil {
		return err
	}
	// The list holds every version in the directory, so that writing
	// another version keeps the earlier ones listed.
	var versions []string
	entries, err := os.ReadDir(vdir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if v, ok := strings.CutSuffix(e.Name(), ".info"); ok {
			versions = append(versions, v)
		}
	}
	semver.Sort(versions)
	versions = slices.Compact(versions)
	if err := os.WriteFile(filepath.Join(vdir, "list"), []byte(strings.Join(versions, "\n")+"\n"), 0o644); err != nil {
		return err
	}
	h1, err := dirhash.HashZip(zipPath, dirhash.Hash1)
	if err != nil {
		return err
	}
	fmt.Printf("%s %s %s (%d files)\n", path, version, h1, len(cf.Valid))
	return nil
}
