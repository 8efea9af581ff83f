package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/virtual-kubelet/virtual-kubelet/errdefs"
	"github.com/virtual-kubelet/virtual-kubelet/node/api"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	statsv1alpha1 "k8s.io/kubelet/pkg/apis/stats/v1alpha1"
)

// provider is one Node's view of the shared runtime
// (nodeutil.Provider + node.PodNotifier).
type provider struct {
	rt   *Runtime
	node string
}

func key(ns, name string) string { return ns + "/" + name }

func (pr *provider) CreatePod(_ context.Context, pod *corev1.Pod) error {
	rt := pr.rt
	k := key(pod.Namespace, pod.Name)
	rt.mu.Lock()
	old := rt.pods[k]
	rt.mu.Unlock()
	if old != nil {
		if old.pod.UID == pod.UID {
			return nil
		}
		// A new incarnation of a name (StatefulSet): the old one must be gone.
		old.terminate(0)
	}
	p := newPodRT(rt, pr.node, pod)
	rt.mu.Lock()
	rt.pods[k] = p
	rt.mu.Unlock()
	logger.Printf("pod %s scheduled on %s", k, pr.node)
	go p.run()
	return nil
}

// UpdatePod takes the new metadata (labels and annotations feed the
// downward API); a running pod's containers are not changed.
func (pr *provider) UpdatePod(_ context.Context, pod *corev1.Pod) error {
	p := pr.rt.getPod(pod.Namespace, pod.Name)
	if p == nil || p.pod.UID != pod.UID {
		return errdefs.NotFoundf("pod %s/%s", pod.Namespace, pod.Name)
	}
	p.mu.Lock()
	p.pod.Labels, p.pod.Annotations = pod.Labels, pod.Annotations
	p.mu.Unlock()
	return nil
}

// DeletePod starts the graceful stop and returns; the status pushed when
// every container has stopped lets virtual-kubelet remove the pod object.
func (pr *provider) DeletePod(_ context.Context, pod *corev1.Pod) error {
	rt := pr.rt
	p := rt.getPod(pod.Namespace, pod.Name)
	if p == nil || p.pod.UID != pod.UID {
		return errdefs.NotFoundf("pod %s/%s", pod.Namespace, pod.Name)
	}
	grace := 30 * time.Second
	if pod.DeletionGracePeriodSeconds != nil {
		grace = time.Duration(*pod.DeletionGracePeriodSeconds) * time.Second
	} else if pod.Spec.TerminationGracePeriodSeconds != nil {
		grace = time.Duration(*pod.Spec.TerminationGracePeriodSeconds) * time.Second
	}
	go func() {
		p.terminate(grace)
		rt.mu.Lock()
		if rt.pods[key(pod.Namespace, pod.Name)] == p {
			delete(rt.pods, key(pod.Namespace, pod.Name))
		}
		rt.mu.Unlock()
		rt.notify(p)
		// As a kubelet does once every container has stopped: remove the
		// object now (grace 0, this incarnation only) instead of letting it
		// linger until the grace period is over.
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		zero := int64(0)
		err := rt.client.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{
			GracePeriodSeconds: &zero,
			Preconditions:      &metav1.Preconditions{UID: &pod.UID},
		})
		if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
			logger.Printf("pod %s/%s: delete after stop: %v", pod.Namespace, pod.Name, err)
		}
	}()
	rt.notify(p)
	return nil
}

func (pr *provider) GetPod(_ context.Context, ns, name string) (*corev1.Pod, error) {
	p := pr.rt.getPod(ns, name)
	if p == nil || p.node != pr.node {
		return nil, errdefs.NotFoundf("pod %s/%s", ns, name)
	}
	return p.snapshot(), nil
}

func (pr *provider) GetPodStatus(ctx context.Context, ns, name string) (*corev1.PodStatus, error) {
	pod, err := pr.GetPod(ctx, ns, name)
	if err != nil {
		return nil, err
	}
	return &pod.Status, nil
}

func (pr *provider) GetPods(context.Context) ([]*corev1.Pod, error) {
	pr.rt.mu.Lock()
	var ps []*podRT
	for _, p := range pr.rt.pods {
		if p.node == pr.node {
			ps = append(ps, p)
		}
	}
	pr.rt.mu.Unlock()
	out := make([]*corev1.Pod, 0, len(ps))
	for _, p := range ps {
		out = append(out, p.snapshot())
	}
	return out, nil
}

func (pr *provider) NotifyPods(_ context.Context, cb func(*corev1.Pod)) {
	pr.rt.mu.Lock()
	pr.rt.notifyFn[pr.node] = cb
	pr.rt.mu.Unlock()
}

func (pr *provider) container(ns, name, ctr string) (*ctrRT, error) {
	p := pr.rt.getPod(ns, name)
	if p == nil {
		return nil, errdefs.NotFoundf("pod %s/%s", ns, name)
	}
	for _, c := range p.ctrs {
		if c.spec.Name == ctr {
			return c, nil
		}
	}
	return nil, errdefs.NotFoundf("container %s in pod %s/%s", ctr, ns, name)
}

// GetContainerLogs serves `kubectl logs`: the current run's log, or the
// previous run's with Previous; Tail, LimitBytes and Follow are honoured.
func (pr *provider) GetContainerLogs(ctx context.Context, ns, name, ctr string, opts api.ContainerLogOpts) (io.ReadCloser, error) {
	c, err := pr.container(ns, name, ctr)
	if err != nil {
		return nil, err
	}
	c.p.mu.Lock()
	run, exited, ever := c.restarts, c.exited, c.everStarted
	c.p.mu.Unlock()
	if opts.Previous {
		if run == 0 || !ever {
			return nil, errdefs.InvalidInputf("previous terminated container %q in pod %q not found", ctr, name)
		}
		run--
		exited = nil
	} else if !ever {
		return nil, errdefs.InvalidInputf("container %q in pod %q is waiting to start", ctr, name)
	}
	path := c.logPath(run)
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if opts.Tail > 0 { // 0: not given (virtual-kubelet cannot tell --tail=0 apart)
		b = tailBytes(b, opts.Tail)
	}
	if opts.LimitBytes > 0 && len(b) > opts.LimitBytes {
		b = b[:opts.LimitBytes]
	}
	if !opts.Follow || exited == nil {
		return io.NopCloser(bytes.NewReader(b)), nil
	}
	// Follow: what is there, then whatever is appended until the run ends.
	r, w := io.Pipe()
	offset, _ := fileSize(path)
	go func() {
		defer w.Close()
		if _, err := w.Write(b); err != nil {
			return
		}
		for {
			f, err := os.Open(path)
			if err != nil {
				return
			}
			_, _ = f.Seek(offset, io.SeekStart)
			n, _ := io.Copy(w, f)
			f.Close()
			offset += n
			select {
			case <-ctx.Done():
				return
			case <-exited:
				if n == 0 {
					return
				}
			case <-time.After(200 * time.Millisecond):
			}
		}
	}()
	return r, nil
}

func fileSize(path string) (int64, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return 0, err
	}
	return fi.Size(), nil
}

// tailBytes keeps the last n lines (n < 0: all).
func tailBytes(b []byte, n int) []byte {
	if n < 0 {
		return b
	}
	if n == 0 {
		return nil
	}
	end := len(b)
	if end > 0 && b[end-1] == '\n' {
		end--
	}
	count := 0
	for i := end - 1; i >= 0; i-- {
		if b[i] == '\n' {
			count++
			if count == n {
				return b[i+1:]
			}
		}
	}
	return b
}

// RunInContainer serves `kubectl exec` (no TTY resizing).
func (pr *provider) RunInContainer(ctx context.Context, ns, name, ctr string, cmd []string, attach api.AttachIO) error {
	c, err := pr.container(ns, name, ctr)
	if err != nil {
		return err
	}
	x := c.execInContainer(ctx, cmd)
	if attach.Stdin() != nil {
		x.Stdin = attach.Stdin()
	}
	x.Stdout, x.Stderr = attach.Stdout(), attach.Stderr()
	if attach.TTY() && x.Stderr == nil {
		x.Stderr = attach.Stdout()
	}
	return x.Run()
}

func (pr *provider) AttachToContainer(context.Context, string, string, string, api.AttachIO) error {
	return fmt.Errorf("attach is not supported by kindex-agent")
}

func (pr *provider) GetStatsSummary(context.Context) (*statsv1alpha1.Summary, error) {
	return &statsv1alpha1.Summary{Node: statsv1alpha1.NodeStats{NodeName: pr.node}}, nil
}

func (pr *provider) GetMetricsResource(context.Context) ([]*dto.MetricFamily, error) {
	return nil, nil
}

// PortForward serves `kubectl port-forward`: a TCP connection to the pod's
// IP (on the tier's bridge) and the port, copied both ways.
func (pr *provider) PortForward(ctx context.Context, ns, name string, port int32, stream io.ReadWriteCloser) error {
	defer stream.Close()
	p := pr.rt.getPod(ns, name)
	if p == nil || p.podIP() == "" {
		return errdefs.NotFoundf("pod %s/%s", ns, name)
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", net.JoinHostPort(p.podIP(), strconv.Itoa(int(port))))
	if err != nil {
		return err
	}
	defer conn.Close()
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(conn, stream); done <- struct{}{} }()
	go func() { _, _ = io.Copy(stream, conn); done <- struct{}{} }()
	select {
	case <-done:
	case <-ctx.Done():
	}
	return nil
}
