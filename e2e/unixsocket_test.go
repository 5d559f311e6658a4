package e2e

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/durationpb"

	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testharness"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testkit"
)

// childUnixLock is the child mode "unixlock": take a lock over the unix
// socket at path (E2E_ADDR) and print ACQUIRED, or the error.
func childUnixLock(path string) int {
	conn, err := grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		fmt.Println("ERROR", err)
		return 1
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	r, err := v1.NewLockServiceClient(conn).AcquireLock(ctx, &v1.AcquireLockRequest{Key: "unix-" + strconv.Itoa(os.Getpid()), Ttl: durationpb.New(time.Minute), Owner: "other-uid"})
	if err != nil || !r.GetAcquired() {
		fmt.Println("ERROR", r, err)
		return 1
	}
	fmt.Println("ACQUIRED")
	return 0
}

// asUser runs this test binary in child mode "unixlock" as uid/gid and
// returns its output. The binary is copied where that user can run it.
func asUser(t *testing.T, bin string, uid, gid uint32, path string) (string, error) {
	t.Helper()
	cmd := exec.Command(bin, "-test.run=^$")
	cmd.Env = append(os.Environ(), childModeEnv+"=unixlock", "E2E_ADDR="+path)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: gid}}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// TestUnixSocketPermissions is issue 18, section 2: the unix socket is
// created 0600 whatever the umask (under umask 000 it used to be
// srwxrwxrwx and any local user took locks), so another uid cannot
// connect; --listen-mode 0660 with --listen-group lets a member of that
// group in. The other uid is "nobody", a real second user: connecting is
// checked by the kernel.
func TestUnixSocketPermissions(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("this test starts a client as another uid (nobody), which needs root")
	}
	nobody, err := user.Lookup("nobody")
	if err != nil {
		t.Fatalf("no user nobody: %v", err)
	}
	uid, _ := strconv.ParseUint(nobody.Uid, 10, 32)
	gid, _ := strconv.ParseUint(nobody.Gid, 10, 32)

	// The child binary and the socket's directory must be reachable by nobody.
	dir, err := os.MkdirTemp("", "rsu")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "e2e.test")
	copyFile(t, self, bin, 0o755)

	// Everything the sidecar creates would be world-writable under umask 0.
	old := syscall.Umask(0)
	t.Cleanup(func() { syscall.Umask(old) })

	for _, tc := range []struct {
		name     string
		args     []string
		mode     os.FileMode
		gid      uint32
		otherGet bool
	}{
		{name: "default 0600", mode: 0o600, gid: uint32(os.Getegid()), otherGet: false},
		{name: "0660 and the other user's group", args: []string{"--listen-mode", "0660", "--listen-group", nobody.Gid}, mode: 0o660, gid: uint32(gid), otherGet: true},
		{name: "0660 and another group", args: []string{"--listen-mode", "0660", "--listen-group", "0"}, mode: 0o660, gid: 0, otherGet: false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, "s.sock")
			sc := testharness.StartSidecarNoWait(t, testharness.BuildSidecar(t), append([]string{"--listen", "unix://" + path}, tc.args...)...)
			// The socket appears under its name with its final mode.
			testkit.Eventually(t, 20*time.Second, "socket "+path, func() bool {
				_, err := os.Stat(path)
				return err == nil
			})
			fi, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			st := fi.Sys().(*syscall.Stat_t)
			if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != tc.mode || st.Gid != tc.gid {
				t.Fatalf("socket %v gid %d; want mode %v gid %d", fi.Mode(), st.Gid, tc.mode, tc.gid)
			}
			// Its owner (this uid) is served.
			out, err := asUser(t, bin, uint32(os.Geteuid()), uint32(os.Getegid()), path)
			if err != nil || !strings.Contains(out, "ACQUIRED") {
				t.Fatalf("owner's client: %v\n%s\nsidecar log:\n%s", err, out, sc.Log())
			}
			out, err = asUser(t, bin, uint32(uid), uint32(gid), path)
			switch {
			case tc.otherGet && (err != nil || !strings.Contains(out, "ACQUIRED")):
				t.Fatalf("nobody's client, let in by the group: %v\n%s", err, out)
			case !tc.otherGet && (err == nil || !strings.Contains(out, "permission denied")):
				t.Fatalf("nobody's client: %v\n%s\nwant refused with permission denied", err, out)
			}
			sc.Signal(syscall.SIGTERM)
			if code, err := sc.Wait(20 * time.Second); err != nil || code != 0 {
				t.Fatalf("exit %d, %v", code, err)
			}
			if _, err := os.Stat(path); !os.IsNotExist(err) {
				t.Errorf("socket left behind after shutdown: %v", err)
			}
			if entries, _ := os.ReadDir(dir); len(entries) != 1 { // the binary only: no private directory left
				t.Errorf("left in the socket's directory: %v", entries)
			}
		})
	}
}

func copyFile(t *testing.T, from, to string, mode os.FileMode) {
	t.Helper()
	in, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(to, mode); err != nil {
		t.Fatal(err)
	}
}
