package k8s

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/seed-a88e5317/resilience-sidecar/internal/testharness"
)

// stopTimeout is how long a stopped process gets to exit after SIGTERM
// before it is killed.
const stopTimeout = 10 * time.Second

// process is one run of a child process (etcd, kube-apiserver, the
// injector) whose output goes to a log file. A goroutine reaps it as soon
// as it exits; stop ends it and waits for that goroutine.
type process struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{} // closed once the process has been reaped
}

// startProcess starts bin with args, its stdout and stderr appended to
// dir/name.log, and registers its stop with owner.Cleanup; a failure to
// start fails tb.
func startProcess(tb, owner testharness.TB, dir, name, bin string, args ...string) *process {
	tb.Helper()
	p := &process{name: name, log: filepath.Join(dir, name+".log"), done: make(chan struct{})}
	f, err := os.OpenFile(p.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		tb.Fatalf("%s: %v", name, err)
	}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Stdout, p.cmd.Stderr = f, f
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		_ = f.Close()
		tb.Fatalf("start %s (%s): %v", name, bin, err)
	}
	go func() {
		_ = p.cmd.Wait()
		_ = f.Close()
		close(p.done)
	}()
	owner.Cleanup(p.stop)
	return p
}

// exited reports whether the process has ended.
func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM, waits up to stopTimeout, then kills. It returns once
// the process has been reaped; calling it again does nothing.
func (p *process) stop() {
	if p.exited() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(stopTimeout):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// tail returns the last n lines of the process's log.
func (p *process) tail(n int) string {
	data, _ := os.ReadFile(p.log)
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// logContains reports whether the process's log holds s.
func (p *process) logContains(s string) bool {
	data, _ := os.ReadFile(p.log)
	return bytes.Contains(data, []byte(s))
}

// waitFor calls ready until it returns nil, failing tb with the process's
// last log lines if the process exits first or within passes.
func waitFor(tb testharness.TB, p *process, within time.Duration, ready func() error) {
	tb.Helper()
	deadline := time.Now().Add(within)
	for {
		err := ready()
		if err == nil {
			return
		}
		if p.exited() {
			tb.Fatalf("%s exited before it was ready (%v); its log ends:\n%s", p.name, err, p.tail(40))
		}
		if time.Now().After(deadline) {
			tb.Fatalf("%s not ready within %v: %v; its log ends:\n%s", p.name, within, err, p.tail(40))
		}
		// real time: polling a child process that starts on its own clock.
		time.Sleep(50 * time.Millisecond)
	}
}

// moduleRoot is the repository's root, from this package's folder.
func moduleRoot() (string, error) {
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		return "", err
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		return "", fmt.Errorf("no go.mod at %s: %w", root, err)
	}
	return root, nil
}
