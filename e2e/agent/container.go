package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// backoffDelay is the CrashLoopBackOff delay before restart number n+1 after
// n consecutive failed runs: none for the first restart, then base, 2*base,
// 4*base, ... capped at max (a kubelet uses base 10s, max 5m).
func backoffDelay(crashes int, base, max time.Duration) time.Duration {
	if crashes <= 0 {
		return 0
	}
	d := base
	for i := 1; i < crashes && d < max; i++ {
		d *= 2
	}
	if d > max {
		d = max
	}
	return d
}

// shouldRestart applies the pod's restartPolicy to a finished run.
func shouldRestart(policy corev1.RestartPolicy, exitCode int32) bool {
	switch policy {
	case corev1.RestartPolicyNever:
		return false
	case corev1.RestartPolicyOnFailure:
		return exitCode != 0
	default:
		return true
	}
}

// A run that lasted this long resets the back-off, as in the kubelet.
const backoffReset = 10 * time.Minute

// supervise runs the container until it finishes for good or the pod is torn
// down. For an init container it returns once a run succeeded (true) or
// failed with no restart to follow (false).
func (c *ctrRT) supervise() bool {
	p := c.p
	policy := p.pod.Spec.RestartPolicy
	if c.init && policy == corev1.RestartPolicyAlways {
		policy = corev1.RestartPolicyOnFailure // init containers run to completion
	}
	for {
		if p.ctx.Err() != nil {
			return false
		}
		if err := c.start(); err != nil {
			logger.Printf("pod %s container %s: %v", p.name(), c.spec.Name, err)
			p.mu.Lock()
			c.state = corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "CreateContainerError", Message: err.Error()}}
			p.mu.Unlock()
			p.rt.notify(p)
			if !sleepCtx(p.ctx, 5*time.Second) {
				return false
			}
			continue
		}
		p.rt.notify(p)
		p.mu.Lock()
		exited, cmd := c.exited, c.proc
		p.mu.Unlock()
		if !c.init {
			go c.probe(exited)
		}
		<-exited
		code, reason := exitStatus(cmd.ProcessState)
		p.mu.Lock()
		ran := time.Since(c.runStart)
		term := &corev1.ContainerStateTerminated{
			ExitCode:   code,
			Reason:     reason,
			StartedAt:  metav1.NewTime(c.runStart),
			FinishedAt: metav1.Now(),
		}
		term.ContainerID = fmt.Sprintf("kindex://%s-%s-%d", p.pod.UID, c.spec.Name, c.restarts)
		if code != 0 && c.spec.TerminationMessagePolicy == corev1.TerminationMessageFallbackToLogsOnError {
			term.Message = tailFile(c.logPath(c.restarts), 80, 2048)
		}
		if msg := c.terminationMessage(); msg != "" {
			term.Message = msg
		}
		c.ready, c.started = false, false
		c.state = corev1.ContainerState{Terminated: term}
		terminating := p.terminating
		restart := !terminating && shouldRestart(policy, code)
		if !restart {
			c.terminalDone = true
			p.mu.Unlock()
			p.rt.notify(p)
			return code == 0 && !terminating
		}
		if ran >= backoffReset {
			c.crashes = 0
		}
		delay := backoffDelay(c.crashes, p.rt.cfg.backoffBase, p.rt.cfg.backoffMax)
		c.crashes++
		c.last = c.state
		if delay > 0 {
			c.state = corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{
				Reason:  "CrashLoopBackOff",
				Message: fmt.Sprintf("back-off %v restarting failed container=%s pod=%s", delay, c.spec.Name, p.pod.Name),
			}}
		}
		p.mu.Unlock()
		logger.Printf("pod %s container %s exited (%d %s) after %v; restart in %v", p.name(), c.spec.Name, code, reason, ran.Round(time.Millisecond), delay)
		p.rt.notify(p)
		if !sleepCtx(p.ctx, delay) {
			return false
		}
		p.mu.Lock()
		c.restarts++
		p.mu.Unlock()
	}
}

func exitStatus(ps *os.ProcessState) (int32, string) {
	if ps == nil {
		return 128, "Error"
	}
	ws, ok := ps.Sys().(syscall.WaitStatus)
	if ok && ws.Signaled() {
		return 128 + int32(ws.Signal()), "Error"
	}
	if ps.ExitCode() == 0 {
		return 0, "Completed"
	}
	return int32(ps.ExitCode()), "Error"
}

func (c *ctrRT) logPath(run int32) string {
	return filepath.Join(c.logDir, fmt.Sprintf("%d.log", run))
}

func (c *ctrRT) ctrDir(run int32) string {
	return filepath.Join(c.p.dir, "containers", c.spec.Name, strconv.Itoa(int(run)))
}

// terminationMessage reads what the container wrote to its
// terminationMessagePath (a per-run file bound there).
func (c *ctrRT) terminationMessage() string {
	b, err := os.ReadFile(filepath.Join(c.ctrDir(c.restarts), "termination-log"))
	if err != nil || len(b) == 0 {
		return ""
	}
	if len(b) > 4096 {
		b = b[len(b)-4096:]
	}
	return string(b)
}

// start launches one run: nsenter joins the pod's network and UTS
// namespaces, in a new mount namespace (CLONE_NEWNS on nsenter itself), and
// execs `kindex-agent container-init`, which builds the root and execs the
// container's command. The process gets its own process group so signals
// reach its children too.
func (c *ctrRT) start() error {
	p := c.p
	spec, err := c.buildInitSpec()
	if err != nil {
		return err
	}
	run := c.restarts
	dir := c.ctrDir(run)
	_ = os.RemoveAll(dir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	// The previous runs' roots are not needed any more.
	if run > 0 {
		_ = os.RemoveAll(c.ctrDir(run - 1))
	}
	spec.Root = filepath.Join(dir, "root")
	spec.Upper = filepath.Join(dir, "upper")
	spec.Work = filepath.Join(dir, "work")
	spec.TerminationLog = filepath.Join(dir, "termination-log")
	if err := os.WriteFile(spec.TerminationLog, nil, 0o666); err != nil {
		return err
	}
	if err := os.Chmod(spec.TerminationLog, 0o666); err != nil {
		return err
	}
	b, err := json.Marshal(spec)
	if err != nil {
		return err
	}
	specPath := filepath.Join(dir, "spec.json")
	if err := os.WriteFile(specPath, b, 0o600); err != nil {
		return err
	}
	if err := os.MkdirAll(c.logDir, 0o755); err != nil {
		return err
	}
	logf, err := os.OpenFile(c.logPath(run), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	hp := p.holderPid()
	if hp == 0 {
		return errors.New("no sandbox")
	}
	cmd := exec.Command("nsenter", fmt.Sprintf("--net=/proc/%d/ns/net", hp), fmt.Sprintf("--uts=/proc/%d/ns/uts", hp),
		"--", p.rt.cfg.self, "container-init", specPath)
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNS, Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start: %w", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	now := time.Now()
	p.mu.Lock()
	c.proc, c.exited, c.runStart = cmd, exited, now
	c.everStarted, c.stopOnce = true, false
	c.state = corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: metav1.NewTime(now)}}
	c.started = c.spec.StartupProbe == nil
	c.ready = c.spec.ReadinessProbe == nil && c.started
	p.mu.Unlock()
	logger.Printf("pod %s container %s started (pid %d, run %d)", p.name(), c.spec.Name, cmd.Process.Pid, run)
	return nil
}

// stop ends the current run: preStop hook (on pod deletion), SIGTERM to the
// process group, SIGKILL at the deadline. It returns once the process is
// reaped (or right away if nothing runs).
func (c *ctrRT) stop(deadline time.Time, withHook bool) {
	p := c.p
	p.mu.Lock()
	cmd, exited := c.proc, c.exited
	running := c.state.Running != nil
	c.stopOnce = true
	p.mu.Unlock()
	if cmd == nil || exited == nil || !running {
		return
	}
	if withHook && c.spec.Lifecycle != nil && c.spec.Lifecycle.PreStop != nil {
		c.runHook(c.spec.Lifecycle.PreStop, deadline, exited)
	}
	pgid := cmd.Process.Pid
	_ = syscall.Kill(-pgid, syscall.SIGTERM)
	t := time.NewTimer(time.Until(deadline))
	defer t.Stop()
	select {
	case <-exited:
	case <-t.C:
		logger.Printf("pod %s container %s: grace period over, SIGKILL", p.name(), c.spec.Name)
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		<-exited
	}
}

// tailFile returns the last maxLines lines of a file, at most maxBytes.
func tailFile(path string, maxLines, maxBytes int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	n := 0
	for i := len(b) - 1; i >= 0; i-- {
		if b[i] == '\n' && i != len(b)-1 {
			n++
			if n >= maxLines {
				b = b[i+1:]
				break
			}
		}
	}
	if len(b) > maxBytes {
		b = b[len(b)-maxBytes:]
	}
	return string(b)
}
