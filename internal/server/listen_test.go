package server_test

import (
	"net"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"

	"github.com/seed-a88e5317/resilience-sidecar/internal/server"
)

// TestListenUnixMode: the socket has its mode and group as soon as its
// name exists, whatever the umask (under umask 000 it used to be
// srwxrwxrwx); nothing of the private directory is left; Close removes
// the socket.
func TestListenUnixMode(t *testing.T) {
	old := syscall.Umask(0)
	t.Cleanup(func() { syscall.Umask(old) })
	gid := os.Getegid()
	for _, tc := range []struct {
		name string
		sock server.UnixSocket
		mode os.FileMode
	}{
		{"default", server.UnixSocket{}, 0o600},
		{"0660 and a group by id", server.UnixSocket{Mode: 0o660, Group: strconv.Itoa(gid)}, 0o660},
		{"0640", server.UnixSocket{Mode: 0o640}, 0o640},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir, err := os.MkdirTemp("", "rs") // short: socket paths are limited to 107 bytes
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = os.RemoveAll(dir) })
			path := filepath.Join(dir, "s.sock")
			lis, err := server.Listen("unix", path, tc.sock)
			if err != nil {
				t.Fatal(err)
			}
			fi, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != tc.mode || int(fi.Sys().(*syscall.Stat_t).Gid) != gid {
				t.Fatalf("socket %v gid %d; want %v gid %d", fi.Mode(), fi.Sys().(*syscall.Stat_t).Gid, tc.mode, gid)
			}
			if got := lis.Addr().String(); got != path {
				t.Errorf("Addr = %s; want %s", got, path)
			}
			if entries, _ := os.ReadDir(dir); len(entries) != 1 {
				t.Errorf("directory holds %v; want the socket only", entries)
			}
			accepted := make(chan error, 1)
			go func() {
				c, err := lis.Accept()
				if err == nil {
					c.Close()
				}
				accepted <- err
			}()
			c, err := net.Dial("unix", path)
			if err != nil {
				t.Fatal(err)
			}
			c.Close()
			if err := <-accepted; err != nil {
				t.Fatal(err)
			}
			if err := lis.Close(); err != nil {
				t.Fatal(err)
			}
			if _, err := os.Stat(path); !os.IsNotExist(err) {
				t.Fatalf("socket left after Close: %v", err)
			}
		})
	}
}

// TestListenUnixRefusesUnknownGroup: a group that does not exist is an
// error, and nothing is left behind.
func TestListenUnixRefusesUnknownGroup(t *testing.T) {
	dir, err := os.MkdirTemp("", "rs")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	if _, err := server.Listen("unix", filepath.Join(dir, "s.sock"), server.UnixSocket{Group: "no-such-group-here"}); err == nil {
		t.Fatal("Listen with an unknown group succeeded")
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("left behind: %v", entries)
	}
}
