// Package testharness starts real processes (the sidecar binary,
// redis-server, PostgreSQL) for the Go client module's tests. It never mocks
// anything: every helper runs the actual program on a loopback port and
// tears it down through the caller's Cleanup.
//
// It is the client module's own copy of the part of the repository's
// internal/testharness its tests use: the client is a separate module and
// cannot import the server module's internal packages, and it must not
// depend on the server's dependencies (so Redis is spoken to in RESP over a
// plain socket, not through a Redis client library). It takes a small TB
// interface, which *testing.T, *testing.B and testkit.MainTB satisfy.
package testharness

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// TB is the part of testing.TB the harness needs; *testing.T and *testing.B satisfy it.
type TB interface {
	Helper()
	Cleanup(func())
	Fatalf(format string, args ...any)
	Logf(format string, args ...any)
	Failed() bool
}

// errWaitTimeout is returned (wrapped) by proc.wait when the process is
// still running after the given timeout.
var errWaitTimeout = errors.New("testharness: process still running after timeout")

// logTailLines is how many trailing log lines are reported on failure.
const logTailLines = 50

// FreeAddr returns "127.0.0.1:<port>" for a loopback TCP port that was free
// when it was chosen (it listens on port 0 and closes the listener). Another
// process may grab the port before the caller binds it; the Start helpers
// retry with a fresh port when that happens.
func FreeAddr(tb TB) string {
	tb.Helper()
	addr, err := freeAddr()
	if err != nil {
		tb.Fatalf("testharness: find free port: %v", err)
	}
	return addr
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	addr := l.Addr().String()
	if err := l.Close(); err != nil {
		return "", err
	}
	return addr, nil
}

// proc is one run of a child process whose stdout and stderr go to a file.
// A goroutine reaps it as soon as it exits, so done can be selected on to
// notice an early exit and Wait never blocks on output copying.
type proc struct {
	cmd  *exec.Cmd
	done chan struct{} // closed once the process has exited and been reaped
	err  error         // cmd.Wait's result; valid after done is closed
}

// startProc starts name with args, appending its stdout and stderr to
// logPath.
func startProc(logPath, name string, args ...string) (*proc, error) {
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	// The child gets its own copy of the descriptor; ours is closed below.
	defer logFile.Close()

	cmd := exec.Command(name, args...)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.SysProcAttr = sysProcAttr()
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &proc{cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// exited reports whether the process has exited.
func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// kill sends SIGKILL (which also ends a stopped process) and waits for the
// process to be reaped. It is a no-op for a process that already exited.
func (p *proc) kill() {
	if p.exited() {
		return
	}
	_ = p.cmd.Process.Kill()
	<-p.done
}

// signal delivers sig unless the process has already exited.
func (p *proc) signal(sig os.Signal) error {
	if p.exited() {
		return os.ErrProcessDone
	}
	return p.cmd.Process.Signal(sig)
}

// wait waits up to timeout for the process to exit. The exit code is -1
// when the process was ended by a signal, in which case err says which.
func (p *proc) wait(timeout time.Duration) (int, error) {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case <-p.done:
	case <-timer.C:
		return -1, fmt.Errorf("pid %d: %w (%v)", p.cmd.Process.Pid, errWaitTimeout, timeout)
	}
	return exitStatus(p.cmd.ProcessState, p.err)
}

// exitStatus turns a reaped process state into (code, err): err is nil when
// the process exited normally with any code.
func exitStatus(st *os.ProcessState, waitErr error) (int, error) {
	if st == nil {
		return -1, waitErr
	}
	if ws, ok := st.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return -1, fmt.Errorf("process terminated by signal: %v", ws.Signal())
	}
	return st.ExitCode(), nil
}

// exitDescription describes how an exited process ended, for messages.
func (p *proc) exitDescription() string {
	if p.cmd.ProcessState == nil {
		return fmt.Sprintf("wait error: %v", p.err)
	}
	return p.cmd.ProcessState.String()
}

// tailFile returns the last n lines of the file at path (or a note saying
// why it could not be read).
func tailFile(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", path, err)
	}
	return tailLines(string(data), n)
}

// tailLines returns the last n lines of s.
func tailLines(s string, n int) string {
	s = strings.TrimRight(s, "\n")
	if s == "" {
		return "(empty)"
	}
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// logSize returns the current size of the log file (0 if it does not exist),
// to be passed to addrInUse later.
func logSize(logPath string) int64 {
	st, err := os.Stat(logPath)
	if err != nil {
		return 0
	}
	return st.Size()
}

// addrInUse reports whether what the program wrote to its log after offset
// shows that it failed to bind its port.
func addrInUse(logPath string, offset int64) bool {
	data, err := os.ReadFile(logPath)
	if err != nil || int64(len(data)) < offset {
		return false
	}
	return bytes.Contains(bytes.ToLower(data[offset:]), []byte("address already in use"))
}

// pollInterval is how often readiness is re-checked while starting a process.
const pollInterval = 25 * time.Millisecond

// ModulePath is the import path of the repository's root module (the
// server), whose directory repoRoot looks for.
const ModulePath = "github.com/seed-a88e5317/resilience-sidecar"

var (
	repoRootOnce sync.Once
	repoRootDir  string
	repoRootErr  error
)

// repoRoot returns the directory of the repository's root module: the
// nearest directory, walking up from the working directory, whose go.mod
// declares ModulePath. The client module's tests run inside the
// repository, so it is found from any package directory of the client.
func repoRoot() (string, error) {
	repoRootOnce.Do(func() {
		dir, err := os.Getwd()
		if err != nil {
			repoRootErr = err
			return
		}
		for {
			if data, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil && declaresModule(data, ModulePath) {
				repoRootDir = dir
				return
			}
			parent := filepath.Dir(dir)
			if parent == dir {
				repoRootErr = fmt.Errorf("no go.mod of module %s in the working directory or any parent: run the tests inside the repository", ModulePath)
				return
			}
			dir = parent
		}
	})
	return repoRootDir, repoRootErr
}

// declaresModule reports whether the go.mod text gomod declares module path.
func declaresModule(gomod []byte, path string) bool {
	for _, line := range strings.Split(string(gomod), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == "module" && strings.Trim(f[1], `"`) == path {
			return true
		}
	}
	return false
}
