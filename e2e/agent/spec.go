package main

import (
	"crypto/tls"
	"fmt"
	"net"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// initSpec is what `kindex-agent container-init` needs to build a
// container's root and exec its process (written as JSON per run).
type initSpec struct {
	Root, Upper, Work string
	TerminationLog    string
	TerminationPath   string
	DNSDir            string
	Mounts            []mountSpec
	ReadOnlyRoot      bool
	UID, GID          *int64
	Groups            []int64
	WorkingDir        string
	Argv              []string
	Env               []string
}

type mountSpec struct {
	Source, Target string
	ReadOnly       bool
}

const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

func insecureTLS() *tls.Config {
	return &tls.Config{InsecureSkipVerify: true} //nolint:gosec // probes, like a kubelet's, do not verify
}

func (p *podRT) podIP() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.ip
}

// ids is the uid and gid the container's process runs as: the container's
// securityContext over the pod's over the image's USER (nil: root).
func (c *ctrRT) ids() (uid, gid *int64) {
	img, _ := lookupImage(c.p.rt.cfg.images, c.spec.Image)
	uid, gid = img.uid, img.gid
	if psc := c.p.pod.Spec.SecurityContext; psc != nil {
		if psc.RunAsUser != nil {
			uid = psc.RunAsUser
		}
		if psc.RunAsGroup != nil {
			gid = psc.RunAsGroup
		}
	}
	if sc := c.spec.SecurityContext; sc != nil {
		if sc.RunAsUser != nil {
			uid = sc.RunAsUser
		}
		if sc.RunAsGroup != nil {
			gid = sc.RunAsGroup
		}
	}
	return uid, gid
}

func (c *ctrRT) buildInitSpec() (*initSpec, error) {
	p := c.p
	rt := p.rt
	img, ok := lookupImage(rt.cfg.images, c.spec.Image)
	if !ok {
		return nil, fmt.Errorf("image %q is not in the agent's image map", c.spec.Image)
	}
	env, err := c.resolveEnv()
	if err != nil {
		return nil, err
	}
	argv := resolveArgv(img.bin, c.spec.Command, c.spec.Args, env)
	s := &initSpec{
		DNSDir:          filepath.Join(rt.cfg.runDir, "dns"),
		Argv:            argv,
		Env:             env,
		WorkingDir:      c.spec.WorkingDir,
		TerminationPath: c.spec.TerminationMessagePath,
	}
	if s.WorkingDir == "" {
		s.WorkingDir = img.workdir
	}
	if s.TerminationPath == "" {
		s.TerminationPath = "/dev/termination-log"
	}
	s.UID, s.GID = c.ids()
	if psc := p.pod.Spec.SecurityContext; psc != nil {
		if psc.FSGroup != nil {
			s.Groups = append(s.Groups, *psc.FSGroup)
		}
		s.Groups = append(s.Groups, psc.SupplementalGroups...)
	}
	if sc := c.spec.SecurityContext; sc != nil && sc.ReadOnlyRootFilesystem != nil {
		s.ReadOnlyRoot = *sc.ReadOnlyRootFilesystem
	}
	p.mu.Lock()
	vols := p.vols
	p.mu.Unlock()
	for _, m := range c.spec.VolumeMounts {
		src, ok := vols.path(m.Name)
		if !ok {
			return nil, fmt.Errorf("volume mount %q: no such volume", m.Name)
		}
		if m.SubPath != "" {
			src = filepath.Join(src, filepath.Clean("/"+m.SubPath))
		}
		s.Mounts = append(s.Mounts, mountSpec{Source: src, Target: m.MountPath, ReadOnly: m.ReadOnly})
	}
	return s, nil
}

// resolveArgv is what a container runtime executes: the image's entrypoint
// (the mapped binary) when no command is given, else the command; a command
// naming the image's binary (e.g. `kindex-node`) runs the mapped binary.
// $(VAR) references in command and args expand from the container's env.
func resolveArgv(bin string, command, args []string, env []string) []string {
	vars := map[string]string{}
	for _, e := range env {
		if k, v, ok := strings.Cut(e, "="); ok {
			vars[k] = v
		}
	}
	var argv []string
	if len(command) == 0 {
		argv = []string{bin}
	} else {
		argv = []string{expandVars(command[0], vars)}
		if filepath.Base(argv[0]) == filepath.Base(bin) {
			argv[0] = bin
		}
		for _, a := range command[1:] {
			argv = append(argv, expandVars(a, vars))
		}
	}
	for _, a := range args {
		argv = append(argv, expandVars(a, vars))
	}
	return argv
}

// expandVars replaces $(NAME) with its value; $$(NAME) is an escaped
// literal $(NAME); unknown references stay as they are (Kubernetes rules).
func expandVars(s string, vars map[string]string) string {
	if !strings.Contains(s, "$") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '$' && i+1 < len(s) {
			if s[i+1] == '$' {
				b.WriteByte('$')
				i++
				continue
			}
			if s[i+1] == '(' {
				if j := strings.IndexByte(s[i+2:], ')'); j >= 0 {
					name := s[i+2 : i+2+j]
					if v, ok := vars[name]; ok {
						b.WriteString(v)
						i += j + 2
						continue
					}
				}
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// resolveEnv builds the process environment as a kubelet does: the
// kubernetes Service variables, HOSTNAME, envFrom, then env (later wins),
// with the downward API (metadata.*, spec.*, status.podIP/hostIP) and
// ConfigMap/Secret key references resolved here.
func (c *ctrRT) resolveEnv() ([]string, error) {
	p := c.p
	rt := p.rt
	pod := p.pod
	hostname := pod.Spec.Hostname
	if hostname == "" {
		hostname = pod.Name
	}
	vars := map[string]string{}
	var order []string
	set := func(k, v string) {
		if _, ok := vars[k]; !ok {
			order = append(order, k)
		}
		vars[k] = v
	}
	set("PATH", defaultPath)
	set("HOSTNAME", hostname)
	apiHost, apiPort := rt.kubernetesService()
	set("KUBERNETES_SERVICE_HOST", apiHost)
	set("KUBERNETES_SERVICE_PORT", apiPort)
	set("KUBERNETES_SERVICE_PORT_HTTPS", apiPort)
	set("KUBERNETES_PORT", "tcp://"+net.JoinHostPort(apiHost, apiPort))
	for _, ef := range c.spec.EnvFrom {
		data := map[string]string{}
		switch {
		case ef.ConfigMapRef != nil:
			cm, err := rt.configMaps.ConfigMaps(pod.Namespace).Get(ef.ConfigMapRef.Name)
			if err != nil {
				if ef.ConfigMapRef.Optional != nil && *ef.ConfigMapRef.Optional {
					continue
				}
				return nil, fmt.Errorf("envFrom configMap %q: %w", ef.ConfigMapRef.Name, err)
			}
			data = cm.Data
		case ef.SecretRef != nil:
			s, err := rt.secrets.Secrets(pod.Namespace).Get(ef.SecretRef.Name)
			if err != nil {
				if ef.SecretRef.Optional != nil && *ef.SecretRef.Optional {
					continue
				}
				return nil, fmt.Errorf("envFrom secret %q: %w", ef.SecretRef.Name, err)
			}
			for k, v := range s.Data {
				data[k] = string(v)
			}
		}
		keys := make([]string, 0, len(data))
		for k := range data {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			set(ef.Prefix+k, data[k])
		}
	}
	for _, e := range c.spec.Env {
		if e.ValueFrom == nil {
			set(e.Name, expandVars(e.Value, vars))
			continue
		}
		v, skip, err := c.envValueFrom(e.ValueFrom)
		if err != nil {
			return nil, fmt.Errorf("env %s: %w", e.Name, err)
		}
		if !skip {
			set(e.Name, v)
		}
	}
	out := make([]string, 0, len(order))
	for _, k := range order {
		out = append(out, k+"="+vars[k])
	}
	return out, nil
}

func (c *ctrRT) envValueFrom(src *corev1.EnvVarSource) (value string, skip bool, err error) {
	p := c.p
	pod := p.pod
	switch {
	case src.FieldRef != nil:
		v, err := fieldValue(pod, src.FieldRef.FieldPath, p.podIP(), p.rt.cfg.nodeIP)
		return v, false, err
	case src.ConfigMapKeyRef != nil:
		r := src.ConfigMapKeyRef
		cm, err := p.rt.configMaps.ConfigMaps(pod.Namespace).Get(r.Name)
		if err == nil {
			if v, ok := cm.Data[r.Key]; ok {
				return v, false, nil
			}
			err = fmt.Errorf("configMap %s has no key %q", r.Name, r.Key)
		}
		if r.Optional != nil && *r.Optional {
			return "", true, nil
		}
		return "", false, err
	case src.SecretKeyRef != nil:
		r := src.SecretKeyRef
		s, err := p.rt.secrets.Secrets(pod.Namespace).Get(r.Name)
		if err == nil {
			if v, ok := s.Data[r.Key]; ok {
				return string(v), false, nil
			}
			err = fmt.Errorf("secret %s has no key %q", r.Name, r.Key)
		}
		if r.Optional != nil && *r.Optional {
			return "", true, nil
		}
		return "", false, err
	case src.ResourceFieldRef != nil:
		return "", false, fmt.Errorf("resourceFieldRef is not supported by kindex-agent")
	}
	return "", false, fmt.Errorf("empty valueFrom")
}

// fieldValue resolves a downward API fieldPath.
func fieldValue(pod *corev1.Pod, path, podIP, hostIP string) (string, error) {
	if k, ok := strings.CutPrefix(path, "metadata.labels['"); ok {
		return pod.Labels[strings.TrimSuffix(k, "']")], nil
	}
	if k, ok := strings.CutPrefix(path, "metadata.annotations['"); ok {
		return pod.Annotations[strings.TrimSuffix(k, "']")], nil
	}
	switch path {
	case "metadata.name":
		return pod.Name, nil
	case "metadata.namespace":
		return pod.Namespace, nil
	case "metadata.uid":
		return string(pod.UID), nil
	case "metadata.labels":
		return formatMap(pod.Labels), nil
	case "metadata.annotations":
		return formatMap(pod.Annotations), nil
	case "spec.nodeName":
		return pod.Spec.NodeName, nil
	case "spec.serviceAccountName":
		return pod.Spec.ServiceAccountName, nil
	case "status.podIP", "status.podIPs":
		return podIP, nil
	case "status.hostIP", "status.hostIPs":
		return hostIP, nil
	}
	return "", fmt.Errorf("unsupported fieldPath %q", path)
}

// formatMap is the downward API's k="v" lines, sorted by key.
func formatMap(m map[string]string) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for i, k := range keys {
		if i > 0 {
			b.WriteByte('\n')
		}
		fmt.Fprintf(&b, "%s=%q", k, m[k])
	}
	return b.String()
}

// kubernetesService is what a kubelet gives pods as KUBERNETES_SERVICE_HOST
// and _PORT: the ClusterIP and https port of default/kubernetes (routed by
// the agent's Service rules). The --apiserver-host/-port flags only stand in
// while that Service is missing.
func (rt *Runtime) kubernetesService() (host, port string) {
	if rt.services != nil {
		if svc, err := rt.services.Services(metav1.NamespaceDefault).Get("kubernetes"); err == nil && hasClusterIP(svc) {
			for _, sp := range svc.Spec.Ports {
				if sp.Name == "https" {
					return svc.Spec.ClusterIP, strconv.Itoa(int(sp.Port))
				}
			}
		}
	}
	logger.Printf("the kubernetes Service has no ClusterIP yet: pods get %s:%s", rt.cfg.apiHost, rt.cfg.apiPort)
	return rt.cfg.apiHost, rt.cfg.apiPort
}
