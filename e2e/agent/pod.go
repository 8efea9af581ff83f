package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// podRT is one pod on this agent: its namespace holder (network + UTS), its
// volumes and one supervisor per container.
type podRT struct {
	rt   *Runtime
	node string
	dir  string // run-dir/pods/<uid>

	ctx    context.Context // ends when the pod is torn down
	cancel context.CancelFunc

	mu          sync.Mutex
	pod         *corev1.Pod
	ip          string
	holder      *exec.Cmd
	holderDone  chan struct{}
	sandboxErr  string
	initialized bool // init containers done
	ctrs        []*ctrRT
	startTime   metav1.Time
	terminating bool
	torn        chan struct{} // closed when the pod is fully stopped
	vols        *volumes
	condTimes   map[corev1.PodConditionType]condTime
}

// ctrRT is one container: the process of its current run and its status.
type ctrRT struct {
	p    *podRT
	spec corev1.Container
	init bool

	// guarded by p.mu
	restarts     int32
	state        corev1.ContainerState
	last         corev1.ContainerState
	ready        bool
	started      bool
	proc         *exec.Cmd
	exited       chan struct{} // closed when the current run's process is reaped
	runStart     time.Time
	crashes      int // consecutive failed runs, for the back-off
	everStarted  bool
	stopOnce     bool // this run is being stopped on purpose (liveness, deletion)
	logDir       string
	terminalDone bool // no restart will follow
}

func newPodRT(rt *Runtime, node string, pod *corev1.Pod) *podRT {
	ctx, cancel := context.WithCancel(context.Background())
	p := &podRT{
		rt:        rt,
		node:      node,
		dir:       filepath.Join(rt.cfg.runDir, "pods", string(pod.UID)),
		ctx:       ctx,
		cancel:    cancel,
		pod:       pod.DeepCopy(),
		startTime: metav1.Now(),
		torn:      make(chan struct{}),
	}
	for _, c := range pod.Spec.InitContainers {
		p.ctrs = append(p.ctrs, p.newCtr(c, true))
	}
	for _, c := range pod.Spec.Containers {
		p.ctrs = append(p.ctrs, p.newCtr(c, false))
	}
	return p
}

func (p *podRT) newCtr(c corev1.Container, init bool) *ctrRT {
	return &ctrRT{
		p: p, spec: c, init: init,
		state:  corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "ContainerCreating"}},
		logDir: filepath.Join(p.dir, "logs", c.Name),
	}
}

func (p *podRT) name() string { return p.pod.Namespace + "/" + p.pod.Name }

// run brings the pod up: sandbox, volumes, init containers, then one
// supervisor per container. Every wait ends with p.ctx.
func (p *podRT) run() {
	for {
		err := p.setupSandbox()
		if err == nil {
			break
		}
		p.mu.Lock()
		p.sandboxErr = err.Error()
		p.mu.Unlock()
		logger.Printf("pod %s: sandbox: %v", p.name(), err)
		p.rt.notify(p)
		if !sleepCtx(p.ctx, 3*time.Second) {
			return
		}
	}
	p.mu.Lock()
	p.sandboxErr = ""
	p.mu.Unlock()
	for {
		vols, err := prepareVolumes(p.ctx, p)
		if err == nil {
			p.mu.Lock()
			p.vols = vols
			p.mu.Unlock()
			break
		}
		p.mu.Lock()
		for _, c := range p.ctrs {
			c.state = corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "ContainerCreating", Message: err.Error()}}
		}
		p.mu.Unlock()
		logger.Printf("pod %s: volumes: %v", p.name(), err)
		p.rt.notify(p)
		if !sleepCtx(p.ctx, 2*time.Second) {
			return
		}
	}
	go p.vols.syncLoop(p.ctx, p)
	p.rt.notify(p)
	for _, c := range p.ctrs {
		if !c.init {
			continue
		}
		if !c.supervise() {
			return // failed for good (restartPolicy Never) or torn down
		}
	}
	p.mu.Lock()
	p.initialized = true
	p.mu.Unlock()
	for _, c := range p.ctrs {
		if !c.init {
			go c.supervise()
		}
	}
}

// setupSandbox starts the holder process (new network + UTS namespace, the
// pod's hostname) and wires a veth from the bridge into it with the pod IP.
func (p *podRT) setupSandbox() error {
	if err := os.MkdirAll(p.dir, 0o755); err != nil {
		return err
	}
	p.mu.Lock()
	haveHolder := p.holder != nil
	p.mu.Unlock()
	if haveHolder {
		return nil
	}
	ip, err := p.rt.allocIP()
	if err != nil {
		return err
	}
	hostname := p.pod.Spec.Hostname
	if hostname == "" {
		hostname = p.pod.Name
	}
	if len(hostname) > 63 {
		hostname = hostname[:63]
	}
	holder := exec.Command(p.rt.cfg.self, "hold", hostname)
	holder.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags: syscall.CLONE_NEWNET | syscall.CLONE_NEWUTS,
		Setpgid:    true,
		Pdeathsig:  syscall.SIGKILL,
	}
	holder.Stderr = os.Stderr
	if err := holder.Start(); err != nil {
		p.rt.releaseIP(ip)
		return fmt.Errorf("start namespace holder: %w", err)
	}
	done := make(chan struct{})
	go func() { _ = holder.Wait(); close(done) }()
	pid := holder.Process.Pid
	fail := func(err error) error {
		_ = holder.Process.Kill()
		<-done
		p.rt.releaseIP(ip)
		return err
	}
	// The host end's name must be unique and at most 15 bytes.
	host := fmt.Sprintf("vk%d", pid)
	netns := fmt.Sprintf("--net=/proc/%d/ns/net", pid)
	gw := p.rt.cfg.nodeIP
	steps := [][]string{
		{"ip", "link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", strconv.Itoa(pid)},
		{"ip", "link", "set", host, "master", p.rt.cfg.bridge, "up"},
		// Hairpin (kubelet's hairpin-veth): a pod reaching a Service whose
		// chosen endpoint is itself gets the packet back out of its own port.
		{"ip", "link", "set", host, "type", "bridge_slave", "hairpin", "on"},
		{"nsenter", netns, "ip", "link", "set", "lo", "up"},
		{"nsenter", netns, "ip", "addr", "add", fmt.Sprintf("%s/%d", ip, p.rt.prefixLen()), "dev", "eth0"},
		{"nsenter", netns, "ip", "link", "set", "eth0", "up"},
		{"nsenter", netns, "ip", "route", "add", "default", "via", gw},
	}
	for _, s := range steps {
		if out, err := exec.Command(s[0], s[1:]...).CombinedOutput(); err != nil {
			return fail(fmt.Errorf("%s: %v: %s", strings.Join(s, " "), err, strings.TrimSpace(string(out))))
		}
	}
	p.mu.Lock()
	p.ip, p.holder, p.holderDone = ip, holder, done
	p.mu.Unlock()
	logger.Printf("pod %s on %s: ip %s, holder pid %d", p.name(), p.node, ip, pid)
	return nil
}

func (p *podRT) holderPid() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.holder == nil {
		return 0
	}
	return p.holder.Process.Pid
}

// terminate stops the pod as a kubelet does on deletion: for every
// container at once, the preStop hook, then SIGTERM, then SIGKILL when the
// grace period (counted from the start, hook included) is over. Then the
// sandbox goes. Safe to call more than once.
func (p *podRT) terminate(grace time.Duration) {
	p.mu.Lock()
	if p.terminating {
		p.mu.Unlock()
		<-p.torn
		return
	}
	p.terminating = true
	ctrs := append([]*ctrRT(nil), p.ctrs...)
	p.mu.Unlock()
	deadline := time.Now().Add(grace)
	var wg sync.WaitGroup
	for _, c := range ctrs {
		wg.Add(1)
		go func() { defer wg.Done(); c.stop(deadline, true) }()
	}
	wg.Wait()
	p.cancel()
	p.mu.Lock()
	holder, done, ip := p.holder, p.holderDone, p.ip
	for _, c := range p.ctrs {
		if c.state.Terminated == nil {
			c.state = corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{
				ExitCode: 0, Reason: "Completed", FinishedAt: metav1.Now()}}
		}
		c.ready = false
	}
	p.mu.Unlock()
	if holder != nil {
		_ = holder.Process.Kill()
		<-done
		p.rt.releaseIP(ip)
	}
	// Volumes and container roots go; logs stay for post-mortems.
	_ = os.RemoveAll(filepath.Join(p.dir, "volumes"))
	_ = os.RemoveAll(filepath.Join(p.dir, "containers"))
	close(p.torn)
	logger.Printf("pod %s stopped", p.name())
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
