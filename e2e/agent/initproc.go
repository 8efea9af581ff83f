package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path"
	"path/filepath"
	"strings"
	"syscall"
)

// holdMain is the pod's namespace holder: started in a new network and UTS
// namespace, it sets the pod's hostname and waits until it is killed. Its
// namespaces live as long as it does; containers join them with nsenter.
func holdMain(args []string) int {
	if len(args) != 1 {
		fmt.Fprintln(os.Stderr, "usage: kindex-agent hold HOSTNAME")
		return 2
	}
	if err := syscall.Sethostname([]byte(args[0])); err != nil {
		fmt.Fprintf(os.Stderr, "hold: sethostname: %v\n", err)
		return 1
	}
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGTERM, syscall.SIGINT)
	<-ch
	return 0
}

// containerInitMain runs inside the container's fresh mount namespace (and
// the pod's network + UTS namespaces). It builds the root: an overlay over
// the host's / (so the host is never written), a private /dev and /proc,
// the pod's volumes and the shared hosts file bound in, read-only when the
// pod says so; then chroot, drop to the pod's user and exec the command.
func containerInitMain(args []string) int {
	if len(args) != 1 {
		fmt.Fprintln(os.Stderr, "usage: kindex-agent container-init SPEC")
		return 2
	}
	b, err := os.ReadFile(args[0])
	if err != nil {
		fmt.Fprintf(os.Stderr, "container-init: %v\n", err)
		return 1
	}
	var s initSpec
	if err := json.Unmarshal(b, &s); err != nil {
		fmt.Fprintf(os.Stderr, "container-init: %v\n", err)
		return 1
	}
	if err := setupRoot(&s); err != nil {
		fmt.Fprintf(os.Stderr, "container-init: %v\n", err)
		return 1
	}
	if err := dropAndExec(&s); err != nil {
		fmt.Fprintf(os.Stderr, "container-init: %v\n", err)
		return 127
	}
	return 0
}

// resolveInRoot resolves p inside root, following symlinks as the
// container would see them (an absolute link target is relative to root,
// `..` never leaves it), so that creating a mount point never follows a link
// out of the container's root onto the host.
func resolveInRoot(root, p string) (string, error) {
	parts := strings.Split(path.Clean("/"+p), "/")
	cur := "/"
	hops := 0
	for len(parts) > 0 {
		part := parts[0]
		parts = parts[1:]
		if part == "" || part == "." {
			continue
		}
		next := path.Join(cur, part)
		fi, err := os.Lstat(filepath.Join(root, next))
		if err == nil && fi.Mode()&os.ModeSymlink != 0 {
			if hops++; hops > 40 {
				return "", fmt.Errorf("%s: too many levels of symbolic links", p)
			}
			target, err := os.Readlink(filepath.Join(root, next))
			if err != nil {
				return "", err
			}
			if path.IsAbs(target) {
				cur = "/"
			}
			parts = append(strings.Split(target, "/"), parts...)
			continue
		}
		cur = next
	}
	return filepath.Join(root, cur), nil
}

func mount(src, dst, fstype string, flags uintptr, data string) error {
	if err := syscall.Mount(src, dst, fstype, flags, data); err != nil {
		return fmt.Errorf("mount %s on %s (%s): %w", src, dst, fstype, err)
	}
	return nil
}

func bindRO(dst string) error {
	return mount("", dst, "", syscall.MS_BIND|syscall.MS_REMOUNT|syscall.MS_RDONLY, "")
}

func setupRoot(s *initSpec) error {
	// Nothing mounted here may propagate back to the tier's namespace.
	if err := mount("", "/", "", syscall.MS_REC|syscall.MS_PRIVATE, ""); err != nil {
		return err
	}
	for _, d := range []string{s.Root, s.Upper, s.Work} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	if err := mount("overlay", s.Root, "overlay", 0,
		fmt.Sprintf("lowerdir=/,upperdir=%s,workdir=%s", s.Upper, s.Work)); err != nil {
		return err
	}
	r := func(p string) string { return filepath.Join(s.Root, p) }
	if err := mount("/proc", r("/proc"), "", syscall.MS_BIND|syscall.MS_REC, ""); err != nil {
		return err
	}
	if err := mount("/sys", r("/sys"), "", syscall.MS_BIND|syscall.MS_REC, ""); err != nil {
		return err
	}
	_ = bindRO(r("/sys"))
	if err := setupDev(s, r("/dev")); err != nil {
		return err
	}
	// A private /tmp, as a container image's would be.
	if err := mount("tmpfs", r("/tmp"), "tmpfs", syscall.MS_NOSUID|syscall.MS_NODEV, "mode=1777"); err != nil {
		return err
	}
	// DNS: /etc/hosts is a symlink into the bound directory the agent
	// renames new versions into, so every update is seen at once.
	if err := os.MkdirAll(r("/etc/kindex-dns"), 0o755); err != nil {
		return err
	}
	if err := mount(s.DNSDir, r("/etc/kindex-dns"), "", syscall.MS_BIND, ""); err != nil {
		return err
	}
	_ = bindRO(r("/etc/kindex-dns"))
	_ = os.Remove(r("/etc/hosts"))
	if err := os.Symlink("kindex-dns/hosts", r("/etc/hosts")); err != nil {
		return err
	}
	for _, m := range s.Mounts {
		// Resolved inside the root: /var/run -> /run must not lead to the
		// host's /run.
		dst, err := resolveInRoot(s.Root, m.Target)
		if err != nil {
			return err
		}
		fi, err := os.Stat(m.Source)
		if err != nil {
			return fmt.Errorf("volume source %s: %w", m.Source, err)
		}
		if fi.IsDir() {
			if err := os.MkdirAll(dst, 0o755); err != nil {
				return err
			}
		} else {
			if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
				return err
			}
			if f, err := os.OpenFile(dst, os.O_CREATE, 0o644); err == nil {
				f.Close()
			}
		}
		if err := mount(m.Source, dst, "", syscall.MS_BIND|syscall.MS_REC, ""); err != nil {
			return err
		}
		if m.ReadOnly {
			if err := bindRO(dst); err != nil {
				return err
			}
		}
	}
	if s.ReadOnlyRoot {
		// The overlay mount itself goes read-only; the mounts under it
		// (volumes, /dev, /proc, /tmp) keep their own flags.
		if err := bindRO(s.Root); err != nil {
			return err
		}
	}
	return nil
}

// setupDev gives the container a tmpfs /dev with the usual device nodes
// bound from the host's, and the run's termination-log file.
func setupDev(s *initSpec, dev string) error {
	if err := mount("tmpfs", dev, "tmpfs", syscall.MS_NOSUID, "mode=755"); err != nil {
		return err
	}
	for _, d := range []string{"null", "zero", "full", "random", "urandom", "tty"} {
		dst := filepath.Join(dev, d)
		f, err := os.OpenFile(dst, os.O_CREATE, 0o666)
		if err != nil {
			return err
		}
		f.Close()
		if err := mount("/dev/"+d, dst, "", syscall.MS_BIND, ""); err != nil {
			return err
		}
	}
	for _, d := range []string{"shm", "pts"} {
		if err := os.MkdirAll(filepath.Join(dev, d), 0o755); err != nil {
			return err
		}
	}
	if err := mount("shm", filepath.Join(dev, "shm"), "tmpfs", syscall.MS_NOSUID|syscall.MS_NODEV, "mode=1777"); err != nil {
		return err
	}
	for name, target := range map[string]string{"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1", "stderr": "/proc/self/fd/2"} {
		if err := os.Symlink(target, filepath.Join(dev, name)); err != nil {
			return err
		}
	}
	if strings.HasPrefix(s.TerminationPath, "/dev/") {
		dst := filepath.Join(dev, strings.TrimPrefix(s.TerminationPath, "/dev/"))
		f, err := os.OpenFile(dst, os.O_CREATE, 0o666)
		if err != nil {
			return err
		}
		f.Close()
		if err := mount(s.TerminationLog, dst, "", syscall.MS_BIND, ""); err != nil {
			return err
		}
	}
	return nil
}

func dropAndExec(s *initSpec) error {
	if err := syscall.Chdir(s.Root); err != nil {
		return err
	}
	if err := syscall.Chroot("."); err != nil {
		return fmt.Errorf("chroot: %w", err)
	}
	wd := s.WorkingDir
	if wd == "" {
		wd = "/"
	}
	if err := syscall.Chdir(wd); err != nil {
		return fmt.Errorf("working dir %s: %w", wd, err)
	}
	if s.UID != nil {
		gid := 0
		if s.GID != nil {
			gid = int(*s.GID)
		}
		groups := make([]int, 0, len(s.Groups))
		for _, g := range s.Groups {
			groups = append(groups, int(g))
		}
		if err := syscall.Setgroups(groups); err != nil {
			return fmt.Errorf("setgroups: %w", err)
		}
		if err := syscall.Setgid(gid); err != nil {
			return fmt.Errorf("setgid: %w", err)
		}
		if err := syscall.Setuid(int(*s.UID)); err != nil {
			return fmt.Errorf("setuid: %w", err)
		}
	} else if len(s.Groups) > 0 {
		groups := make([]int, 0, len(s.Groups))
		for _, g := range s.Groups {
			groups = append(groups, int(g))
		}
		if err := syscall.Setgroups(groups); err != nil {
			return fmt.Errorf("setgroups: %w", err)
		}
	}
	path := s.Argv[0]
	if !strings.Contains(path, "/") {
		for _, e := range s.Env {
			if v, ok := strings.CutPrefix(e, "PATH="); ok {
				_ = os.Setenv("PATH", v)
			}
		}
		lp, err := exec.LookPath(path)
		if err != nil {
			return fmt.Errorf("%s: executable file not found in $PATH", path)
		}
		path = lp
	}
	if err := syscall.Exec(path, s.Argv, s.Env); err != nil {
		return fmt.Errorf("exec %s: %w", path, err)
	}
	return nil
}
