package server

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
)

// DefaultSocketMode is a unix socket's mode unless configured: only the
// sidecar's user may connect (connecting needs write permission).
const DefaultSocketMode os.FileMode = 0o600

// UnixSocket is how Listen makes a unix socket.
type UnixSocket struct {
	// Mode is its permission bits (0: DefaultSocketMode). Connecting
	// needs write permission: 0660 lets Group in.
	Mode os.FileMode
	// Group, a group name or numeric id, owns the socket ("": the
	// process's group).
	Group string
}

// LookupGroup returns the id of group, a name or a numeric id.
func LookupGroup(group string) (int, error) {
	if id, err := strconv.Atoi(group); err == nil && id >= 0 {
		return id, nil
	}
	g, err := user.LookupGroup(group)
	if err != nil {
		return 0, fmt.Errorf("group %q: %w", group, err)
	}
	return strconv.Atoi(g.Gid)
}

// listenUnix listens on a unix socket at path whose mode and group are
// sock's before anyone but this user can reach it. The socket is bound
// in a new directory next to path that only this user can enter (0700),
// given its group and mode there, and then hard-linked to path: the name
// appears with the final permissions already in place, and nothing
// connected to it in between but this user (or root, which permissions do
// not stop anyway). Linking, unlike renaming, never replaces a file that
// appeared at path meanwhile. Changing the umask around the bind instead
// would change it for every goroutine of the process at once.
func listenUnix(path string, sock UnixSocket) (_ net.Listener, err error) {
	mode := sock.Mode.Perm()
	if mode == 0 {
		mode = DefaultSocketMode
	}
	gid := -1
	if sock.Group != "" {
		if gid, err = LookupGroup(sock.Group); err != nil {
			return nil, fmt.Errorf("listen_group: %w", err)
		}
	}
	if err := removeStaleSocket(path); err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp(filepath.Dir(path), ".rs")
	if err != nil {
		return nil, fmt.Errorf("listen: private directory for the socket: %w", err)
	}
	defer os.RemoveAll(dir) //nolint:errcheck // the socket is linked to path by then, or failed
	tmp := filepath.Join(dir, "s")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listen: %w", err)
	}
	l.SetUnlinkOnClose(false) // it is unlinked under its final name
	defer func() {
		if err != nil {
			_ = l.Close()
		}
	}()
	if gid >= 0 {
		if err := os.Chown(tmp, -1, gid); err != nil {
			return nil, fmt.Errorf("listen_group: %w", err)
		}
	}
	if err := os.Chmod(tmp, mode); err != nil {
		return nil, fmt.Errorf("listen_mode: %w", err)
	}
	if err := os.Link(tmp, path); err != nil {
		if errors.Is(err, os.ErrExist) {
			return nil, fmt.Errorf("listen: %s appeared while the socket was made: another process is starting on it", path)
		}
		return nil, fmt.Errorf("listen: %w", err)
	}
	return &unixListener{UnixListener: l, path: path, addr: &net.UnixAddr{Name: path, Net: "unix"}}, nil
}

// unixListener is a socket listening under path, which it removes when
// closed.
type unixListener struct {
	*net.UnixListener
	path string
	addr net.Addr
}

func (l *unixListener) Addr() net.Addr { return l.addr }

func (l *unixListener) Close() error {
	err := l.UnixListener.Close()
	if rerr := os.Remove(l.path); rerr != nil && !errors.Is(rerr, os.ErrNotExist) && err == nil {
		err = rerr
	}
	return err
}
