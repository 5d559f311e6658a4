package testharness

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// postgresReadyTimeout bounds how long StartPostgres waits for
// the server to accept connections.
const postgresReadyTimeout = 30 * time.Second

// postgresStartAttempts is how many fresh ports StartPostgres tries when the
// port it picked was taken by someone else in the meantime.
const postgresStartAttempts = 3

// OutboxSQLPath is the outbox schema, relative to the module root, that
// StartPostgres applies.
const OutboxSQLPath = "deploy/postgres/outbox.sql"

// PostgresUser is the superuser of the servers StartPostgres runs (trust
// authentication on loopback, no password).
const PostgresUser = "postgres"

// Postgres is a PostgreSQL server (initdb'd into a temporary directory) on
// a loopback port, owned by one test. Its methods are safe for concurrent use.
type Postgres struct {
	tb      TB
	bin     string // the postgres binary
	dir     string // holds data/, sock/ and the log
	dataDir string
	sockDir string
	logPath string
	cred    *syscall.Credential // nil: run as ourselves

	mu   sync.Mutex
	addr string
	p    *proc
}

// postgresBin finds a PostgreSQL server program (initdb, postgres) on PATH
// or in the Debian layout /usr/lib/postgresql/<version>/bin.
func postgresBin(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	matches, _ := filepath.Glob(filepath.Join("/usr/lib/postgresql", "*", "bin", name))
	if len(matches) > 0 {
		return matches[len(matches)-1], nil // the highest version sorts last (same digit count)
	}
	return "", fmt.Errorf("%s not found on PATH or in /usr/lib/postgresql/*/bin: run `make postgres` (scripts/ensure-postgres.sh)", name)
}

// postgresCredential is who runs initdb and postgres: PostgreSQL refuses
// to run as root, so when we are root it is the user "postgres" (created
// by the Debian package) or else "nobody"; nil otherwise.
func postgresCredential() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	for _, name := range []string{"postgres", "nobody"} {
		u, err := user.Lookup(name)
		if err != nil {
			continue
		}
		uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
		gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
		if err1 != nil || err2 != nil || uid == 0 {
			continue
		}
		return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), NoSetGroups: true}, nil
	}
	return nil, errors.New("running as root and neither user postgres nor nobody exists to run PostgreSQL as")
}

// StartPostgres initialises a fresh cluster in a temporary directory
// (fsync off), starts postgres on a free loopback port (its Unix socket in
// that directory too), waits until it accepts connections, creates the
// outbox table of deploy/postgres/outbox.sql in the database "postgres",
// and registers a Cleanup that kills the server and removes the directory.
// When the test runs as root the server runs as the user postgres (or
// nobody). It fails tb when the binaries are missing or the server does not
// become ready within 30s.
func StartPostgres(tb TB) *Postgres {
	tb.Helper()
	initdb, err := postgresBin("initdb")
	if err != nil {
		tb.Fatalf("testharness: %v", err)
	}
	bin, err := postgresBin("postgres")
	if err != nil {
		tb.Fatalf("testharness: %v", err)
	}
	cred, err := postgresCredential()
	if err != nil {
		tb.Fatalf("testharness: %v", err)
	}
	dir, err := os.MkdirTemp("", "testharness-postgres-")
	if err != nil {
		tb.Fatalf("testharness: create postgres dir: %v", err)
	}
	pg := &Postgres{
		tb:      tb,
		bin:     bin,
		dir:     dir,
		dataDir: filepath.Join(dir, "data"),
		sockDir: filepath.Join(dir, "sock"),
		logPath: filepath.Join(dir, "postgres.log"),
		cred:    cred,
	}
	tb.Cleanup(pg.cleanup)
	for _, d := range []string{pg.dataDir, pg.sockDir} {
		if err := os.Mkdir(d, 0o700); err != nil {
			tb.Fatalf("testharness: %v", err)
		}
	}
	if cred != nil {
		for _, p := range []string{dir, pg.dataDir, pg.sockDir} {
			if err := os.Chown(p, int(cred.Uid), int(cred.Gid)); err != nil {
				tb.Fatalf("testharness: chown %s for the postgres user: %v", p, err)
			}
		}
	}

	ip, err := pg.startProc(initdb, "-D", pg.dataDir, "-U", PostgresUser, "--auth=trust",
		"-E", "UTF8", "--locale=C", "--no-sync")
	if err != nil {
		tb.Fatalf("testharness: start initdb: %v", err)
	}
	if code, err := ip.wait(2 * time.Minute); err != nil || code != 0 {
		ip.kill()
		tb.Fatalf("testharness: initdb failed (exit %d, %v)\nlog (%s), last %d lines:\n%s",
			code, err, pg.logPath, logTailLines, tailFile(pg.logPath, logTailLines))
	}

	for attempt := 1; ; attempt++ {
		addr, err := freeAddr()
		if err != nil {
			tb.Fatalf("testharness: find free port: %v", err)
		}
		offset := logSize(pg.logPath)
		pg.mu.Lock()
		pg.addr = addr
		err = pg.startLocked()
		pg.mu.Unlock()
		if err == nil {
			break
		}
		if attempt < postgresStartAttempts && addrInUse(pg.logPath, offset) {
			tb.Logf("testharness: postgres port %s was taken, retrying on another port", addr)
			continue
		}
		tb.Fatalf("testharness: %v\npostgres log (%s), last %d lines:\n%s",
			err, pg.logPath, logTailLines, tailFile(pg.logPath, logTailLines))
	}
	pg.applyOutboxSQL(tb, pg.URL())
	return pg
}

// startProc starts name as the postgres user in its own process group,
// output appended to the log.
func (pg *Postgres) startProc(name string, args ...string) (*proc, error) {
	logFile, err := os.OpenFile(pg.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer logFile.Close()
	cmd := exec.Command(name, args...)
	cmd.Dir = pg.dir
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	attr := sysProcAttr()
	if attr == nil {
		attr = &syscall.SysProcAttr{}
	}
	attr.Setpgid = true // the server's backends are killed with it
	attr.Credential = pg.cred
	cmd.SysProcAttr = attr
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

// startLocked starts the server on pg.addr and waits until it accepts a
// connection; on failure it is killed.
func (pg *Postgres) startLocked() error {
	_, port, _ := net.SplitHostPort(pg.addr)
	p, err := pg.startProc(pg.bin, "-D", pg.dataDir, "-p", port, "-k", pg.sockDir,
		"-c", "listen_addresses=127.0.0.1",
		"-c", "fsync=off",
		"-c", "full_page_writes=off",
		"-c", "max_connections=200",
		"-c", "log_min_messages=warning")
	if err != nil {
		return fmt.Errorf("start postgres: %w", err)
	}
	pg.p = p
	if err := pg.waitReady(p); err != nil {
		killGroup(p)
		return err
	}
	return nil
}

func (pg *Postgres) waitReady(p *proc) error {
	deadline := time.Now().Add(postgresReadyTimeout)
	var lastErr error
	for {
		if p.exited() {
			return fmt.Errorf("postgres on %s exited before accepting connections: %s", pg.addr, p.exitDescription())
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		var c *pgx.Conn
		c, lastErr = pgx.Connect(ctx, postgresURL(pg.addr, "postgres"))
		if lastErr == nil {
			lastErr = c.Ping(ctx)
			_ = c.Close(ctx)
		}
		cancel()
		if lastErr == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("postgres on %s not ready within %v: %v", pg.addr, postgresReadyTimeout, lastErr)
		}
		time.Sleep(pollInterval)
	}
}

// killGroup crashes the server: SIGQUIT is PostgreSQL's "immediate
// shutdown" (the postmaster SIGQUITs every backend and exits without a
// checkpoint, so the next start runs crash recovery). The backends run in
// their own sessions, so a SIGKILL of the postmaster alone would leave them
// holding the shared memory a restart needs; SIGKILL follows only if the
// server has not exited within 10s.
func killGroup(p *proc) {
	if p.exited() {
		return
	}
	_ = p.signal(syscall.SIGQUIT)
	if _, err := p.wait(10 * time.Second); err != nil && errors.Is(err, errWaitTimeout) {
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		p.kill()
	}
}

// Addr returns "127.0.0.1:port".
func (pg *Postgres) Addr() string {
	pg.mu.Lock()
	defer pg.mu.Unlock()
	return pg.addr
}

// URL returns the connection URL of the database "postgres", which holds
// the outbox table.
func (pg *Postgres) URL() string { return postgresURL(pg.Addr(), "postgres") }

func postgresURL(addr, db string) string {
	return "postgres://" + PostgresUser + "@" + addr + "/" + db + "?sslmode=disable"
}

// applyOutboxSQL runs deploy/postgres/outbox.sql in the database at url.
func (pg *Postgres) applyOutboxSQL(tb TB, url string) {
	tb.Helper()
	root, err := repoRoot()
	if err != nil {
		tb.Fatalf("testharness: the outbox schema %s: %v", OutboxSQLPath, err)
	}
	sql, err := os.ReadFile(filepath.Join(root, OutboxSQLPath))
	if err != nil {
		tb.Fatalf("testharness: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, url)
	if err != nil {
		tb.Fatalf("testharness: connect to postgres: %v", err)
	}
	defer c.Close(ctx)
	if _, err := c.PgConn().Exec(ctx, string(sql)).ReadAll(); err != nil {
		tb.Fatalf("testharness: apply %s: %v", OutboxSQLPath, err)
	}
}

// cleanup kills the server, reports its log tail if the test failed and
// removes its directory.
func (pg *Postgres) cleanup() {
	pg.mu.Lock()
	p := pg.p
	pg.mu.Unlock()
	if p != nil {
		killGroup(p)
	}
	if pg.tb.Failed() {
		pg.tb.Logf("postgres %s log, last %d lines:\n%s", pg.Addr(), logTailLines, tailFile(pg.logPath, logTailLines))
	}
	_ = os.RemoveAll(pg.dir)
}
