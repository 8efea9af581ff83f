package main

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestBackoffDelayGrowsAndCaps(t *testing.T) {
	base, maxD := 10*time.Second, 5*time.Minute
	want := []time.Duration{0, 10 * time.Second, 20 * time.Second, 40 * time.Second, 80 * time.Second, 160 * time.Second, 5 * time.Minute, 5 * time.Minute}
	for n, w := range want {
		if got := backoffDelay(n, base, maxD); got != w {
			t.Errorf("backoffDelay(%d) = %v, want %v", n, got, w)
		}
	}
}

func TestShouldRestart(t *testing.T) {
	cases := []struct {
		policy corev1.RestartPolicy
		code   int32
		want   bool
	}{
		{corev1.RestartPolicyAlways, 0, true},
		{corev1.RestartPolicyAlways, 1, true},
		{"", 0, true}, // the API server defaults to Always
		{corev1.RestartPolicyOnFailure, 0, false},
		{corev1.RestartPolicyOnFailure, 137, true},
		{corev1.RestartPolicyNever, 1, false},
	}
	for _, c := range cases {
		if got := shouldRestart(c.policy, c.code); got != c.want {
			t.Errorf("shouldRestart(%q, %d) = %v", c.policy, c.code, got)
		}
	}
}

func TestImageMap(t *testing.T) {
	m, err := parseImageMap("# comment\n\nkindex/kindex-node /bin/node user=65532:65533 workdir=/data\n" +
		"kindex/kindex-node:broken /bin/broken user=1:2\nregistry:5000/kindex/op@sha256:abc /bin/op\n" +
		"registry:5000/kindex/old:0.1.0 /bin/old\n")
	if err != nil {
		t.Fatal(err)
	}
	for image, want := range map[string]string{
		"kindex/kindex-node:9.9":             "/bin/node",
		"kindex/kindex-node":                 "/bin/node",
		"kindex/kindex-node@sha256:1":        "/bin/node",
		"kindex/kindex-node:broken":          "/bin/broken",
		"kindex/kindex-node:broken@sha256:1": "/bin/broken",
		"kindex/kindex-node:broken2":         "/bin/node",
		"registry:5000/kindex/op:v1":         "/bin/op",
		"registry:5000/kindex/op@sha1":       "/bin/op",
		"registry:5000/kindex/old:0.1.0":     "/bin/old",
		"registry:5000/kindex/old:0.2.0":     "",
		"registry:5000/kindex/old":           "",
	} {
		got, ok := lookupImage(m, image)
		if got.bin != want || ok != (want != "") {
			t.Errorf("%s -> %q (found %v), want %q", image, got.bin, ok, want)
		}
	}
	if n, _ := lookupImage(m, "kindex/kindex-node"); n.uid == nil || *n.uid != 65532 || n.gid == nil || *n.gid != 65533 || n.workdir != "/data" {
		t.Errorf("image user/workdir not parsed: %+v", n)
	}
	if b, _ := lookupImage(m, "kindex/kindex-node:broken"); b.uid == nil || *b.uid != 1 || b.workdir != "" {
		t.Errorf("a tagged entry takes nothing from the untagged one: %+v", b)
	}
	for _, bad := range []string{"just-one-field\n", "a /b user=x\n", "a /b color=red\n", "a:1 /b\na:1@sha256:x /c\n"} {
		if _, err := parseImageMap(bad); err == nil {
			t.Errorf("%q was accepted", bad)
		}
	}
}

func TestResolveArgv(t *testing.T) {
	env := []string{"A=1", "NAME=x"}
	cases := []struct {
		cmd, args, want []string
	}{
		{nil, []string{"--a"}, []string{"/b/kindex-node", "--a"}},                                     // image entrypoint
		{[]string{"kindex-node"}, []string{"--x=$(NAME)"}, []string{"/b/kindex-node", "--x=x"}},       // command names the image's binary
		{[]string{"sh", "-c", "echo $(A) $$(A) $(B)"}, nil, []string{"sh", "-c", "echo 1 $(A) $(B)"}}, // other programs from the host PATH
	}
	for _, c := range cases {
		if got := resolveArgv("/b/kindex-node", c.cmd, c.args, env); !reflect.DeepEqual(got, c.want) {
			t.Errorf("resolveArgv(%q, %q) = %q, want %q", c.cmd, c.args, got, c.want)
		}
	}
}

func TestFieldValue(t *testing.T) {
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "ns", Labels: map[string]string{"b": "2", "a": "1"}},
		Spec:       corev1.PodSpec{NodeName: "n1", ServiceAccountName: "sa"},
	}
	for path, want := range map[string]string{
		"metadata.name": "p", "metadata.namespace": "ns", "spec.nodeName": "n1",
		"spec.serviceAccountName": "sa", "status.podIP": "10.244.0.10", "status.hostIP": "10.244.0.1",
		"metadata.labels['b']": "2", "metadata.labels": "a=\"1\"\nb=\"2\"",
	} {
		got, err := fieldValue(pod, path, "10.244.0.10", "10.244.0.1")
		if err != nil || got != want {
			t.Errorf("%s = %q, %v; want %q", path, got, err, want)
		}
	}
	if _, err := fieldValue(pod, "spec.bogus", "", ""); err == nil {
		t.Error("an unknown fieldPath was accepted")
	}
}

func ptr[T any](v T) *T { return &v }

func TestRenderHosts(t *testing.T) {
	pods := []*corev1.Pod{
		{ObjectMeta: metav1.ObjectMeta{Name: "idx-s0-0", Namespace: "ns"},
			Spec:   corev1.PodSpec{Hostname: "idx-s0-0", Subdomain: "idx-s0-headless"},
			Status: corev1.PodStatus{PodIP: "10.244.0.10", Phase: corev1.PodRunning}},
		{ObjectMeta: metav1.ObjectMeta{Name: "no-ip", Namespace: "ns"},
			Spec: corev1.PodSpec{Hostname: "no-ip", Subdomain: "s"}},
	}
	svcs := []*corev1.Service{
		{ObjectMeta: metav1.ObjectMeta{Name: "idx-s0-headless", Namespace: "ns"}, Spec: corev1.ServiceSpec{ClusterIP: "None"}},
		{ObjectMeta: metav1.ObjectMeta{Name: "idx-client", Namespace: "ns"}, Spec: corev1.ServiceSpec{ClusterIP: "10.96.0.20"}},
		{ObjectMeta: metav1.ObjectMeta{Name: "empty", Namespace: "ns"}, Spec: corev1.ServiceSpec{ClusterIP: "10.96.0.21"}},
		{ObjectMeta: metav1.ObjectMeta{Name: "ext", Namespace: "ns"}, Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeExternalName, ExternalName: "example.org"}},
	}
	slices := []*discoveryv1.EndpointSlice{{
		ObjectMeta: metav1.ObjectMeta{Name: "x", Namespace: "ns", Labels: map[string]string{discoveryv1.LabelServiceName: "idx-s0-headless"}},
		Endpoints: []discoveryv1.Endpoint{
			{Addresses: []string{"10.244.0.10"}, Hostname: ptr("idx-s0-0"), Conditions: discoveryv1.EndpointConditions{Ready: ptr(true)}},
			{Addresses: []string{"10.244.0.11"}},
			{Addresses: []string{"10.244.0.12"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr(false)}},
		},
	}, {
		// A normal Service's endpoints are reached through its ClusterIP,
		// never by name.
		ObjectMeta: metav1.ObjectMeta{Name: "y", Namespace: "ns", Labels: map[string]string{discoveryv1.LabelServiceName: "idx-client"}},
		Endpoints:  []discoveryv1.Endpoint{{Addresses: []string{"10.244.0.13"}, Hostname: ptr("h")}},
	}}
	got := renderHosts(pods, svcs, slices, "cluster.local")
	for _, want := range []string{
		"10.244.0.10\tidx-s0-0.idx-s0-headless.ns.svc.cluster.local idx-s0-0.idx-s0-headless.ns.svc\n",
		"10.244.0.10\tidx-s0-headless.ns.svc.cluster.local idx-s0-headless.ns.svc\n",
		"10.244.0.11\tidx-s0-headless.ns.svc.cluster.local idx-s0-headless.ns.svc\n",
		"10.96.0.20\tidx-client.ns.svc.cluster.local idx-client.ns.svc\n",
		"10.96.0.21\tempty.ns.svc.cluster.local empty.ns.svc\n",
		"127.0.0.1\tlocalhost\n",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("hosts file lacks %q:\n%s", want, got)
		}
	}
	for _, bad := range []string{"10.244.0.12", "10.244.0.13", "no-ip", "ext.ns"} {
		if strings.Contains(got, bad) {
			t.Errorf("hosts file lists %q:\n%s", bad, got)
		}
	}
	if got != renderHosts(pods, svcs, slices, "cluster.local") {
		t.Error("output is not deterministic")
	}
}

func TestWriteAtomicDirSwapsAllFilesAtOnce(t *testing.T) {
	dir := t.TempDir()
	if err := writeAtomicDir(dir, map[string]file{"a": {[]byte("1"), 0o644}, "sub/b": {[]byte("2"), 0o600}}, nil); err != nil {
		t.Fatal(err)
	}
	first, _ := os.Readlink(filepath.Join(dir, "..data"))
	if err := writeAtomicDir(dir, map[string]file{"a": {[]byte("3"), 0o644}}, nil); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "a")); err != nil || string(b) != "3" {
		t.Errorf("a = %q, %v; want 3", b, err)
	}
	if _, err := os.Lstat(filepath.Join(dir, "sub")); !os.IsNotExist(err) {
		t.Errorf("a name no longer projected is still there: %v", err)
	}
	if l, _ := os.Readlink(filepath.Join(dir, "a")); l != "..data/a" {
		t.Errorf("a is not a symlink through ..data: %q", l)
	}
	if _, err := os.Stat(filepath.Join(dir, first)); !os.IsNotExist(err) {
		t.Errorf("the old version's directory %s was not removed", first)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 3 { // a, ..data, one timestamped directory
		t.Errorf("entries: %v", entries)
	}
}

func TestTailBytes(t *testing.T) {
	b := []byte("1\n2\n3\n")
	for n, want := range map[int]string{-1: "1\n2\n3\n", 0: "", 1: "3\n", 2: "2\n3\n", 5: "1\n2\n3\n"} {
		if got := string(tailBytes(b, n)); got != want {
			t.Errorf("tail %d = %q, want %q", n, got, want)
		}
	}
}

func TestResolveInRootStaysInside(t *testing.T) {
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "run"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(root, "var"), 0o755); err != nil {
		t.Fatal(err)
	}
	// Debian's /var/run -> /run, and a relative link climbing out.
	if err := os.Symlink("/run", filepath.Join(root, "var/run")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("../../../../etc", filepath.Join(root, "run/up")); err != nil {
		t.Fatal(err)
	}
	for in, want := range map[string]string{
		"/var/run/secrets/x": "/run/secrets/x",
		"/run/up/passwd":     "/etc/passwd",
		"/data":              "/data",
		"../../data":         "/data",
	} {
		got, err := resolveInRoot(root, in)
		if err != nil || got != filepath.Join(root, want) {
			t.Errorf("resolveInRoot(%q) = %q, %v; want %q", in, got, err, filepath.Join(root, want))
		}
	}
}
