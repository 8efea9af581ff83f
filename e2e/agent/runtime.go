package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	discoverylisters "k8s.io/client-go/listers/discovery/v1"
	"k8s.io/client-go/tools/cache"
)

// Runtime holds the pods of every Node this agent serves (pod names are
// unique per namespace cluster-wide, so one map is enough).
type Runtime struct {
	cfg    *config
	client kubernetes.Interface

	mu       sync.Mutex
	pods     map[string]*podRT // namespace/name
	usedIPs  map[string]bool
	notifyFn map[string]func(*corev1.Pod) // per node name

	configMaps corelisters.ConfigMapLister
	secrets    corelisters.SecretLister
	allPods    corelisters.PodLister
	slices     discoverylisters.EndpointSliceLister
	services   corelisters.ServiceLister
	dnsKick    chan struct{}
}

func newRuntime(c *config, client kubernetes.Interface) (*Runtime, error) {
	for _, d := range []string{"pods", "dns"} {
		if err := os.MkdirAll(filepath.Join(c.runDir, d), 0o755); err != nil {
			return nil, err
		}
	}
	rt := &Runtime{
		cfg:      c,
		client:   client,
		pods:     map[string]*podRT{},
		usedIPs:  map[string]bool{},
		notifyFn: map[string]func(*corev1.Pod){},
		dnsKick:  make(chan struct{}, 1),
	}
	// An empty hosts file from the start: containers bind it in.
	if err := rt.writeHosts(); err != nil {
		return nil, err
	}
	return rt, nil
}

func (rt *Runtime) startInformers(ctx context.Context, f informers.SharedInformerFactory) {
	rt.configMaps = f.Core().V1().ConfigMaps().Lister()
	rt.secrets = f.Core().V1().Secrets().Lister()
	rt.allPods = f.Core().V1().Pods().Lister()
	rt.slices = f.Discovery().V1().EndpointSlices().Lister()
	rt.services = f.Core().V1().Services().Lister()
	kick := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { rt.kickDNS() },
		UpdateFunc: func(any, any) { rt.kickDNS() },
		DeleteFunc: func(any) { rt.kickDNS() },
	}
	_, _ = f.Core().V1().Pods().Informer().AddEventHandler(kick)
	_, _ = f.Discovery().V1().EndpointSlices().Informer().AddEventHandler(kick)
	_, _ = f.Core().V1().Services().Informer().AddEventHandler(kick)
	f.Start(ctx.Done())
	f.WaitForCacheSync(ctx.Done())
}

// startDNSLoop keeps the hosts file current. ClusterIP Services are routed
// by kube-proxy (nftables mode), which the tier runs next to this agent.
func (rt *Runtime) startDNSLoop(ctx context.Context) {
	go rt.dnsLoop(ctx)
}

func (rt *Runtime) kickDNS() {
	select {
	case rt.dnsKick <- struct{}{}:
	default:
	}
}

// dnsLoop rewrites the shared hosts file whenever pods, Services or
// EndpointSlices change (coalescing bursts), and every few seconds as a
// safety net.
func (rt *Runtime) dnsLoop(ctx context.Context) {
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-rt.dnsKick:
			time.Sleep(100 * time.Millisecond)
		case <-t.C:
		}
		if err := rt.writeHosts(); err != nil {
			logger.Printf("hosts file: %v", err)
		}
	}
}

// writeHosts renders the hosts file and replaces it atomically (rename in
// the directory every container has bound at /etc/kindex-dns, with
// /etc/hosts a symlink into it).
func (rt *Runtime) writeHosts() error {
	var content string
	if rt.allPods != nil {
		pods, err := rt.allPods.List(labels.Everything())
		if err != nil {
			return err
		}
		slices, err := rt.slices.List(labels.Everything())
		if err != nil {
			return err
		}
		svcs, err := rt.services.List(labels.Everything())
		if err != nil {
			return err
		}
		content = renderHosts(pods, svcs, slices, rt.cfg.clusterDomain)
	} else {
		content = renderHosts(nil, nil, nil, rt.cfg.clusterDomain)
	}
	dir := filepath.Join(rt.cfg.runDir, "dns")
	if old, err := os.ReadFile(filepath.Join(dir, "hosts")); err == nil && string(old) == content {
		return nil
	}
	return writeFileAtomic(dir, "hosts", []byte(content), 0o644)
}

func writeFileAtomic(dir, name string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(dir, "."+name+".tmp")
	if err != nil {
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return err
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return err
	}
	if err := tmp.Close(); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	return os.Rename(tmp.Name(), filepath.Join(dir, name))
}

// allocIP hands out the lowest free address of the pod range above .9
// (.1 is the agent, the rest of the low addresses are kept for the tier).
func (rt *Runtime) allocIP() (string, error) {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	base := rt.cfg.podCIDR.IP.To4()
	ones, bits := rt.cfg.podCIDR.Mask.Size()
	size := 1 << (bits - ones)
	for i := 10; i < size-1; i++ {
		ip := net.IPv4(base[0], base[1], base[2]+byte(i>>8), base[3]+byte(i&0xff)).String()
		if !rt.usedIPs[ip] {
			rt.usedIPs[ip] = true
			return ip, nil
		}
	}
	return "", fmt.Errorf("pod range %s exhausted", rt.cfg.podCIDR)
}

func (rt *Runtime) releaseIP(ip string) {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	delete(rt.usedIPs, ip)
}

func (rt *Runtime) prefixLen() int {
	ones, _ := rt.cfg.podCIDR.Mask.Size()
	return ones
}

// notify pushes a pod's current status to virtual-kubelet.
func (rt *Runtime) notify(p *podRT) {
	rt.mu.Lock()
	fn := rt.notifyFn[p.node]
	rt.mu.Unlock()
	if fn != nil {
		fn(p.snapshot())
	}
}

func (rt *Runtime) getPod(ns, name string) *podRT {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	return rt.pods[ns+"/"+name]
}

// shutdown stops every pod at once (the tier is going away).
func (rt *Runtime) shutdown() {
	rt.mu.Lock()
	pods := make([]*podRT, 0, len(rt.pods))
	for _, p := range rt.pods {
		pods = append(pods, p)
	}
	rt.mu.Unlock()
	var wg sync.WaitGroup
	for _, p := range pods {
		wg.Add(1)
		go func() { defer wg.Done(); p.terminate(2 * time.Second) }()
	}
	wg.Wait()
}

// imageInfo is what the agent knows of an image: the binary its entrypoint
// runs, and the image's USER and WORKDIR (used when the pod does not say).
type imageInfo struct {
	bin      string
	uid, gid *int64
	workdir  string
}

// parseImageMap reads `IMAGE BINARY [user=UID[:GID]] [workdir=DIR]` lines
// (# comments, blank lines). An IMAGE without a tag matches every tag of its
// repository; one with a tag (`repo:broken`) only that tag, and wins over the
// untagged entry. A digest is ignored. See lookupImage.
func parseImageMap(s string) (map[string]imageInfo, error) {
	m := map[string]imageInfo{}
	for i, line := range strings.Split(s, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if len(f) < 2 {
			return nil, fmt.Errorf("line %d: want `IMAGE BINARY [user=UID[:GID]] [workdir=DIR]`, got %q", i+1, line)
		}
		info := imageInfo{bin: f[1]}
		for _, opt := range f[2:] {
			k, v, _ := strings.Cut(opt, "=")
			switch k {
			case "user":
				u, g, hasG := strings.Cut(v, ":")
				uid, err := strconv.ParseInt(u, 10, 64)
				if err != nil {
					return nil, fmt.Errorf("line %d: user %q: want numeric UID[:GID]", i+1, v)
				}
				info.uid = &uid
				if hasG {
					gid, err := strconv.ParseInt(g, 10, 64)
					if err != nil {
						return nil, fmt.Errorf("line %d: user %q: want numeric UID[:GID]", i+1, v)
					}
					info.gid = &gid
				}
			case "workdir":
				info.workdir = v
			default:
				return nil, fmt.Errorf("line %d: unknown option %q", i+1, opt)
			}
		}
		key := stripDigest(f[0])
		if _, dup := m[key]; dup {
			return nil, fmt.Errorf("line %d: image %q is mapped twice", i+1, key)
		}
		m[key] = info
	}
	return m, nil
}

// lookupImage finds the entry for an image reference: the entry of its exact
// repository and tag if there is one, else its repository's untagged entry.
func lookupImage(m map[string]imageInfo, image string) (imageInfo, bool) {
	if info, ok := m[stripDigest(image)]; ok {
		return info, true
	}
	info, ok := m[imageRepo(image)]
	return info, ok
}

// stripDigest drops a digest (@sha256:...) from an image reference.
func stripDigest(image string) string {
	if i := strings.Index(image, "@"); i >= 0 {
		return image[:i]
	}
	return image
}

// imageRepo strips a digest (@sha256:...) and a tag (:v1, but not a
// registry port) from an image reference.
func imageRepo(image string) string {
	image = stripDigest(image)
	if i := strings.LastIndex(image, ":"); i > strings.LastIndex(image, "/") {
		image = image[:i]
	}
	return image
}
