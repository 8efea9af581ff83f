package main

import (
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// volumes are a pod's volumes on the agent's disk: name → host directory.
type volumes struct {
	mu      sync.Mutex
	paths   map[string]string
	hashes  map[string]string // projected volumes: hash of the last written content
	tokens  map[string]tokenCache
	fsGroup *int64
}

type tokenCache struct {
	token   string
	refresh time.Time
}

func (v *volumes) path(name string) (string, bool) {
	if v == nil {
		return "", false
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	p, ok := v.paths[name]
	return p, ok
}

// file is one projected file.
type file struct {
	data []byte
	mode os.FileMode
}

// prepareVolumes creates every volume of the pod; a PVC that is not bound
// yet, or a missing ConfigMap/Secret, is an error the caller retries.
func prepareVolumes(ctx context.Context, p *podRT) (*volumes, error) {
	v := &volumes{paths: map[string]string{}, hashes: map[string]string{}, tokens: map[string]tokenCache{}}
	if psc := p.pod.Spec.SecurityContext; psc != nil {
		v.fsGroup = psc.FSGroup
	}
	for _, vol := range p.pod.Spec.Volumes {
		dir := filepath.Join(p.dir, "volumes", vol.Name)
		switch {
		case vol.EmptyDir != nil:
			if err := os.MkdirAll(dir, 0o777); err != nil {
				return nil, err
			}
			if err := os.Chmod(dir, 0o777); err != nil {
				return nil, err
			}
			if err := v.applyFSGroup(dir); err != nil {
				return nil, err
			}
		case vol.PersistentVolumeClaim != nil:
			pvDir, err := pvcPath(ctx, p, vol.PersistentVolumeClaim.ClaimName)
			if err != nil {
				return nil, err
			}
			dir = pvDir
			if err := v.applyFSGroup(dir); err != nil {
				return nil, err
			}
		case vol.HostPath != nil:
			dir = vol.HostPath.Path
			if t := vol.HostPath.Type; t != nil && *t == corev1.HostPathDirectoryOrCreate {
				if err := os.MkdirAll(dir, 0o755); err != nil {
					return nil, err
				}
			}
		case vol.ConfigMap != nil, vol.Secret != nil, vol.Projected != nil, vol.DownwardAPI != nil:
			if err := v.syncProjected(ctx, p, vol, dir); err != nil {
				return nil, err
			}
		default:
			return nil, fmt.Errorf("volume %q: type not supported by kindex-agent", vol.Name)
		}
		v.paths[vol.Name] = dir
	}
	return v, nil
}

// pvcPath is the directory of the PersistentVolume bound to the claim
// (hostPath or local volumes, as the hostpath provisioner makes).
func pvcPath(ctx context.Context, p *podRT, claim string) (string, error) {
	c, err := p.rt.client.CoreV1().PersistentVolumeClaims(p.pod.Namespace).Get(ctx, claim, metav1.GetOptions{})
	if err != nil {
		return "", fmt.Errorf("claim %s: %w", claim, err)
	}
	if c.Status.Phase != corev1.ClaimBound || c.Spec.VolumeName == "" {
		return "", fmt.Errorf("claim %s is not bound yet", claim)
	}
	pv, err := p.rt.client.CoreV1().PersistentVolumes().Get(ctx, c.Spec.VolumeName, metav1.GetOptions{})
	if err != nil {
		return "", fmt.Errorf("volume %s of claim %s: %w", c.Spec.VolumeName, claim, err)
	}
	var dir string
	switch {
	case pv.Spec.HostPath != nil:
		dir = pv.Spec.HostPath.Path
	case pv.Spec.Local != nil:
		dir = pv.Spec.Local.Path
	default:
		return "", fmt.Errorf("volume %s: only hostPath and local volumes are supported", pv.Name)
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return "", err
	}
	return dir, nil
}

// applyFSGroup does what a kubelet does for fsGroup on writable volumes
// (policy OnRootMismatch): group-own the tree by fsGroup, make it group
// read-write and set the setgid bit on directories.
func (v *volumes) applyFSGroup(dir string) error {
	if v.fsGroup == nil {
		return nil
	}
	gid := int(*v.fsGroup)
	if st, err := os.Stat(dir); err == nil {
		if sys, ok := statGid(st); ok && sys == gid && st.Mode()&os.ModeSetgid != 0 {
			return nil // OnRootMismatch: the root is right, the tree is left alone
		}
	}
	return filepath.Walk(dir, func(path string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		if fi.Mode()&os.ModeSymlink != 0 {
			return nil
		}
		if err := os.Lchown(path, -1, gid); err != nil {
			return err
		}
		mode := fi.Mode().Perm() | 0o060
		if fi.IsDir() {
			mode |= 0o010 | os.ModeSetgid
		}
		return os.Chmod(path, mode)
	})
}

// syncLoop keeps ConfigMap, Secret, downward API and token volumes current
// (a kubelet does it on its sync period; this one is 2 s).
func (v *volumes) syncLoop(ctx context.Context, p *podRT) {
	for sleepCtx(ctx, 2*time.Second) {
		for _, vol := range p.pod.Spec.Volumes {
			if vol.ConfigMap == nil && vol.Secret == nil && vol.Projected == nil && vol.DownwardAPI == nil {
				continue
			}
			if err := v.syncProjected(ctx, p, vol, filepath.Join(p.dir, "volumes", vol.Name)); err != nil && ctx.Err() == nil {
				logger.Printf("pod %s volume %s: %v", p.name(), vol.Name, err)
			}
		}
	}
}

func (v *volumes) syncProjected(ctx context.Context, p *podRT, vol corev1.Volume, dir string) error {
	files, err := v.render(ctx, p, vol)
	if err != nil {
		return err
	}
	h := hashFiles(files)
	v.mu.Lock()
	same := v.hashes[vol.Name] == h
	v.mu.Unlock()
	if same {
		return nil
	}
	var gid *int
	if v.fsGroup != nil {
		g := int(*v.fsGroup)
		gid = &g
	}
	if err := writeAtomicDir(dir, files, gid); err != nil {
		return err
	}
	v.mu.Lock()
	v.hashes[vol.Name] = h
	v.mu.Unlock()
	return nil
}

func hashFiles(files map[string]file) string {
	keys := make([]string, 0, len(files))
	for k := range files {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	h := sha256.New()
	for _, k := range keys {
		fmt.Fprintf(h, "%s\x00%o\x00%d\x00", k, files[k].mode, len(files[k].data))
		h.Write(files[k].data)
	}
	return fmt.Sprintf("%x", h.Sum(nil))
}

func modeOr(m *int32, def int32) os.FileMode {
	if m != nil {
		return os.FileMode(*m)
	}
	return os.FileMode(def)
}

// render computes the files of a ConfigMap, Secret, downward API or
// projected volume.
func (v *volumes) render(ctx context.Context, p *podRT, vol corev1.Volume) (map[string]file, error) {
	out := map[string]file{}
	ns := p.pod.Namespace
	switch {
	case vol.ConfigMap != nil:
		s := vol.ConfigMap
		return out, v.addConfigMap(p, ns, s.Name, s.Items, s.Optional, modeOr(s.DefaultMode, 0o644), out)
	case vol.Secret != nil:
		s := vol.Secret
		return out, v.addSecret(p, ns, s.SecretName, s.Items, s.Optional, modeOr(s.DefaultMode, 0o644), out)
	case vol.DownwardAPI != nil:
		return out, addDownward(p, vol.DownwardAPI.Items, modeOr(vol.DownwardAPI.DefaultMode, 0o644), out)
	case vol.Projected != nil:
		def := modeOr(vol.Projected.DefaultMode, 0o644)
		for i, src := range vol.Projected.Sources {
			var err error
			switch {
			case src.ConfigMap != nil:
				err = v.addConfigMap(p, ns, src.ConfigMap.Name, src.ConfigMap.Items, src.ConfigMap.Optional, def, out)
			case src.Secret != nil:
				err = v.addSecret(p, ns, src.Secret.Name, src.Secret.Items, src.Secret.Optional, def, out)
			case src.DownwardAPI != nil:
				err = addDownward(p, src.DownwardAPI.Items, def, out)
			case src.ServiceAccountToken != nil:
				var tok string
				tok, err = v.token(ctx, p, fmt.Sprintf("%s/%d", vol.Name, i), src.ServiceAccountToken)
				if err == nil {
					out[src.ServiceAccountToken.Path] = file{data: []byte(tok), mode: def}
				}
			default:
				err = fmt.Errorf("projected source not supported by kindex-agent")
			}
			if err != nil {
				return nil, fmt.Errorf("volume %s: %w", vol.Name, err)
			}
		}
	}
	return out, nil
}

func (v *volumes) addConfigMap(p *podRT, ns, name string, items []corev1.KeyToPath, optional *bool, def os.FileMode, out map[string]file) error {
	cm, err := p.rt.configMaps.ConfigMaps(ns).Get(name)
	if err != nil {
		if optional != nil && *optional {
			return nil
		}
		return fmt.Errorf("configMap %s: %w", name, err)
	}
	data := map[string][]byte{}
	for k, val := range cm.Data {
		data[k] = []byte(val)
	}
	for k, val := range cm.BinaryData {
		data[k] = val
	}
	return project(data, items, def, out, "configMap "+name)
}

func (v *volumes) addSecret(p *podRT, ns, name string, items []corev1.KeyToPath, optional *bool, def os.FileMode, out map[string]file) error {
	s, err := p.rt.secrets.Secrets(ns).Get(name)
	if err != nil {
		if optional != nil && *optional {
			return nil
		}
		return fmt.Errorf("secret %s: %w", name, err)
	}
	return project(s.Data, items, def, out, "secret "+name)
}

func project(data map[string][]byte, items []corev1.KeyToPath, def os.FileMode, out map[string]file, what string) error {
	if len(items) == 0 {
		for k, val := range data {
			out[k] = file{data: val, mode: def}
		}
		return nil
	}
	for _, it := range items {
		val, ok := data[it.Key]
		if !ok {
			return fmt.Errorf("%s has no key %q", what, it.Key)
		}
		out[it.Path] = file{data: val, mode: modeOr(it.Mode, int32(def))}
	}
	return nil
}

func addDownward(p *podRT, items []corev1.DownwardAPIVolumeFile, def os.FileMode, out map[string]file) error {
	for _, it := range items {
		if it.FieldRef == nil {
			return fmt.Errorf("downwardAPI %s: only fieldRef is supported", it.Path)
		}
		val, err := fieldValue(p.pod, it.FieldRef.FieldPath, p.podIP(), p.rt.cfg.nodeIP)
		if err != nil {
			return err
		}
		out[it.Path] = file{data: []byte(val), mode: modeOr(it.Mode, int32(def))}
	}
	return nil
}

// token is a bound ServiceAccount token for the pod (TokenRequest API),
// renewed at 80% of its lifetime like a kubelet's.
func (v *volumes) token(ctx context.Context, p *podRT, key string, src *corev1.ServiceAccountTokenProjection) (string, error) {
	v.mu.Lock()
	tc, ok := v.tokens[key]
	v.mu.Unlock()
	if ok && time.Now().Before(tc.refresh) {
		return tc.token, nil
	}
	exp := int64(3600)
	if src.ExpirationSeconds != nil {
		exp = *src.ExpirationSeconds
	}
	var aud []string
	if src.Audience != "" {
		aud = []string{src.Audience}
	}
	sa := p.pod.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	tr, err := p.rt.client.CoreV1().ServiceAccounts(p.pod.Namespace).CreateToken(ctx, sa, &authv1.TokenRequest{
		Spec: authv1.TokenRequestSpec{
			Audiences:         aud,
			ExpirationSeconds: &exp,
			BoundObjectRef:    &authv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: p.pod.Name, UID: p.pod.UID},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("token for serviceaccount %s: %w", sa, err)
	}
	life := time.Until(tr.Status.ExpirationTimestamp.Time)
	v.mu.Lock()
	v.tokens[key] = tokenCache{token: tr.Status.Token, refresh: time.Now().Add(life * 8 / 10)}
	v.mu.Unlock()
	return tr.Status.Token, nil
}

// writeAtomicDir writes files the way a kubelet's AtomicWriter does: into a
// new timestamped directory, then a rename of the `..data` symlink switches
// every file at once; user-visible names are symlinks through `..data`.
// A container that has the directory bound sees either the old or the new
// set, never a mix.
func writeAtomicDir(dir string, files map[string]file, gid *int) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	ts, err := os.MkdirTemp(dir, ".."+time.Now().UTC().Format("2006_01_02_15_04_05."))
	if err != nil {
		return err
	}
	if err := os.Chmod(ts, 0o755); err != nil {
		return err
	}
	for rel, f := range files {
		rel = filepath.Clean("/" + rel)[1:]
		dst := filepath.Join(ts, rel)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(dst, f.data, f.mode); err != nil {
			return err
		}
		if err := os.Chmod(dst, f.mode); err != nil {
			return err
		}
		if gid != nil {
			if err := os.Chown(dst, -1, *gid); err != nil {
				return err
			}
		}
	}
	dataLink := filepath.Join(dir, "..data")
	tmpLink := filepath.Join(dir, "..data_tmp")
	_ = os.Remove(tmpLink)
	if err := os.Symlink(filepath.Base(ts), tmpLink); err != nil {
		return err
	}
	if err := os.Rename(tmpLink, dataLink); err != nil {
		return err
	}
	// Top-level names: create the new ones, drop the ones no longer there.
	want := map[string]bool{}
	for rel := range files {
		top := strings.SplitN(filepath.Clean("/" + rel)[1:], "/", 2)[0]
		want[top] = true
	}
	for top := range want {
		link := filepath.Join(dir, top)
		if t, err := os.Readlink(link); err == nil && t == filepath.Join("..data", top) {
			continue
		}
		_ = os.Remove(link)
		if err := os.Symlink(filepath.Join("..data", top), link); err != nil {
			return err
		}
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		n := e.Name()
		if strings.HasPrefix(n, "..") {
			// Older timestamped directories (the one ..data pointed at, or
			// leftovers of an interrupted write) are no longer referenced.
			if n != "..data" && n != filepath.Base(ts) && e.IsDir() {
				_ = os.RemoveAll(filepath.Join(dir, n))
			}
			continue
		}
		if !want[n] {
			_ = os.Remove(filepath.Join(dir, n))
		}
	}
	return nil
}

func statGid(fi os.FileInfo) (int, bool) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, false
	}
	return int(st.Gid), true
}
