package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// probe runs the startup, liveness and readiness probes of one container
// run until it exits, as a kubelet does: the startup probe first (a failure
// past its threshold kills the container), then liveness (same) and
// readiness (flips Ready) side by side.
func (c *ctrRT) probe(exited chan struct{}) {
	p := c.p
	ctx, cancel := context.WithCancel(p.ctx)
	defer cancel()
	go func() {
		select {
		case <-exited:
			cancel()
		case <-ctx.Done():
		}
	}()
	p.mu.Lock()
	runStart := c.runStart
	p.mu.Unlock()
	if sp := c.spec.StartupProbe; sp != nil {
		ok := c.probeLoop(ctx, sp, runStart, "startup", func(res bool, consecutive int) bool {
			if res && consecutive >= threshold(sp.SuccessThreshold) {
				p.mu.Lock()
				c.started = true
				c.ready = c.spec.ReadinessProbe == nil
				p.mu.Unlock()
				p.rt.notify(p)
				return false
			}
			if !res && consecutive >= threshold(sp.FailureThreshold) {
				c.kill("startup probe failed")
				return false
			}
			return true
		})
		if !ok {
			return
		}
		p.mu.Lock()
		started := c.started
		p.mu.Unlock()
		if !started {
			return
		}
	}
	if lp := c.spec.LivenessProbe; lp != nil {
		go c.probeLoop(ctx, lp, runStart, "liveness", func(res bool, consecutive int) bool {
			if !res && consecutive >= threshold(lp.FailureThreshold) {
				c.kill("liveness probe failed")
				return false
			}
			return true
		})
	}
	if rp := c.spec.ReadinessProbe; rp != nil {
		c.probeLoop(ctx, rp, runStart, "readiness", func(res bool, consecutive int) bool {
			want := -1
			if res && consecutive >= threshold(rp.SuccessThreshold) {
				want = 1
			} else if !res && consecutive >= threshold(rp.FailureThreshold) {
				want = 0
			}
			if want >= 0 {
				p.mu.Lock()
				changed := c.ready != (want == 1)
				c.ready = want == 1
				p.mu.Unlock()
				if changed {
					logger.Printf("pod %s container %s: ready=%v", p.name(), c.spec.Name, want == 1)
					p.rt.notify(p)
				}
			}
			return true
		})
	}
	<-ctx.Done()
}

func threshold(t int32) int {
	if t <= 0 {
		return 1
	}
	return int(t)
}

// probeLoop runs pr every period (after initialDelay) and hands each result
// and the count of consecutive equal results to on, until on returns false
// (returns true) or ctx ends (returns false).
func (c *ctrRT) probeLoop(ctx context.Context, pr *corev1.Probe, runStart time.Time, kind string, on func(bool, int) bool) bool {
	period := time.Duration(max(pr.PeriodSeconds, 1)) * time.Second
	if pr.PeriodSeconds == 0 {
		period = 10 * time.Second
	}
	timeout := time.Duration(max(pr.TimeoutSeconds, 1)) * time.Second
	if !sleepCtx(ctx, time.Until(runStart.Add(time.Duration(pr.InitialDelaySeconds)*time.Second))) {
		return false
	}
	last, n := false, 0
	for {
		err := c.probeOnce(ctx, pr.ProbeHandler, timeout)
		res := err == nil
		if ctx.Err() != nil {
			return false
		}
		if res == last {
			n++
		} else {
			last, n = res, 1
		}
		if !res && n == 1 {
			logger.Printf("pod %s container %s: %s probe failed: %v", c.p.name(), c.spec.Name, kind, err)
		}
		if !on(res, n) {
			return true
		}
		if !sleepCtx(ctx, period) {
			return false
		}
	}
}

// kill stops the current run because a probe said so; the supervisor then
// restarts it (subject to restartPolicy and back-off).
func (c *ctrRT) kill(why string) {
	p := c.p
	logger.Printf("pod %s container %s: %s, restarting", p.name(), c.spec.Name, why)
	grace := 30 * time.Second
	if g := p.pod.Spec.TerminationGracePeriodSeconds; g != nil {
		grace = time.Duration(*g) * time.Second
	}
	go c.stop(time.Now().Add(grace), true)
}

func (c *ctrRT) probeOnce(ctx context.Context, h corev1.ProbeHandler, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	p := c.p
	switch {
	case h.HTTPGet != nil:
		port, err := c.resolvePort(h.HTTPGet.Port)
		if err != nil {
			return err
		}
		host := h.HTTPGet.Host
		if host == "" {
			host = p.podIP()
		}
		scheme := "http"
		if h.HTTPGet.Scheme == corev1.URISchemeHTTPS {
			scheme = "https"
		}
		url := fmt.Sprintf("%s://%s%s", scheme, net.JoinHostPort(host, strconv.Itoa(port)), h.HTTPGet.Path)
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		for _, hd := range h.HTTPGet.HTTPHeaders {
			req.Header.Add(hd.Name, hd.Value)
		}
		req.Header.Set("User-Agent", "kube-probe/1.34")
		resp, err := probeClient.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode < 200 || resp.StatusCode >= 400 {
			return fmt.Errorf("HTTP probe failed with statuscode: %d", resp.StatusCode)
		}
		return nil
	case h.TCPSocket != nil:
		port, err := c.resolvePort(h.TCPSocket.Port)
		if err != nil {
			return err
		}
		host := h.TCPSocket.Host
		if host == "" {
			host = p.podIP()
		}
		var d net.Dialer
		conn, err := d.DialContext(ctx, "tcp", net.JoinHostPort(host, strconv.Itoa(port)))
		if err != nil {
			return err
		}
		return conn.Close()
	case h.Exec != nil:
		out, err := c.execInContainer(ctx, h.Exec.Command).CombinedOutput()
		if err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		return nil
	default:
		return fmt.Errorf("probe handler not supported by kindex-agent (grpc?)")
	}
}

var probeClient = &http.Client{
	// A kubelet does not follow redirects to other hosts; none of our
	// probes redirect, so none are followed at all.
	CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	Transport:     &http.Transport{DisableKeepAlives: true, TLSClientConfig: insecureTLS()},
}

func (c *ctrRT) resolvePort(port intstr.IntOrString) (int, error) {
	if port.Type == intstr.Int {
		return port.IntValue(), nil
	}
	for _, cp := range c.spec.Ports {
		if cp.Name == port.StrVal {
			return int(cp.ContainerPort), nil
		}
	}
	if n, err := strconv.Atoi(port.StrVal); err == nil {
		return n, nil
	}
	return 0, fmt.Errorf("port %q not found in the container's ports", port.StrVal)
}

// execInContainer runs a command inside the container of the current run:
// its namespaces, root directory and working directory, as its user.
func (c *ctrRT) execInContainer(ctx context.Context, argv []string) *exec.Cmd {
	p := c.p
	p.mu.Lock()
	pid := 0
	if c.proc != nil && c.state.Running != nil {
		pid = c.proc.Process.Pid
	}
	p.mu.Unlock()
	args := []string{"-t", strconv.Itoa(pid), "-n", "-u", "-m", "-r", "-w"}
	uid, gid := c.ids()
	if uid != nil {
		args = append(args, "-S", strconv.FormatInt(*uid, 10), "-G", strconv.FormatInt(gidOr0(gid), 10))
	}
	args = append(args, "--")
	args = append(args, argv...)
	if pid == 0 {
		return exec.CommandContext(ctx, "false")
	}
	return exec.CommandContext(ctx, "nsenter", args...)
}

func gidOr0(g *int64) int64 {
	if g == nil {
		return 0
	}
	return *g
}

// runHook runs a lifecycle handler (preStop), bounded by the deadline and
// by the process exiting.
func (c *ctrRT) runHook(h *corev1.LifecycleHandler, deadline time.Time, exited chan struct{}) {
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	go func() {
		select {
		case <-exited:
			cancel()
		case <-ctx.Done():
		}
	}()
	start := time.Now()
	var err error
	switch {
	case h.Sleep != nil:
		sleepCtx(ctx, time.Duration(h.Sleep.Seconds)*time.Second)
	case h.Exec != nil:
		var out []byte
		out, err = c.execInContainer(ctx, h.Exec.Command).CombinedOutput()
		if err != nil {
			err = fmt.Errorf("%v: %s", err, out)
		}
	case h.HTTPGet != nil:
		err = c.probeOnce(ctx, corev1.ProbeHandler{HTTPGet: h.HTTPGet}, time.Until(deadline))
	case h.TCPSocket != nil:
		err = fmt.Errorf("tcpSocket lifecycle hooks are deprecated and not run")
	}
	logger.Printf("pod %s container %s: preStop done in %v (err: %v)", c.p.name(), c.spec.Name, time.Since(start).Round(time.Millisecond), err)
}
