// Command kindex-testenv runs a real Kubernetes control plane for kindex's
// Kubernetes test tier: an embedded etcd and kube-apiserver in this process,
// and optionally kube-controller-manager (same binary, child process).
//
// Usage:
//
//	kindex-testenv [flags]                 start; prints "READY <kubeconfig>" on stdout
//	kindex-testenv kubeconfig --from KC --token T --out PATH
//	                                       write a kubeconfig for another token
//
// Everything listens on 127.0.0.1 only. The process stops on SIGTERM/SIGINT
// or after --max-lifetime, whichever comes first, and then removes its
// temporary directory (unless --keep).
package main

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/csv"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"k8s.io/kubernetes/cmd/kube-apiserver/app"
	kcmapp "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	proxyapp "k8s.io/kubernetes/cmd/kube-proxy/app"
	schedapp "k8s.io/kubernetes/cmd/kube-scheduler/app"
)

const (
	serviceCIDR = "10.96.0.0/16"
	adminUser   = "kindex-admin"
	// controllerManagerSubcommand is the hidden subcommand the parent uses to
	// re-execute itself as kube-controller-manager.
	controllerManagerSubcommand = "controller-manager"
	// schedulerSubcommand re-executes this binary as kube-scheduler.
	schedulerSubcommand = "scheduler"
	// proxySubcommand runs this binary as kube-proxy. The parent never starts
	// it: kube-proxy belongs to a node, so the full-stack tier starts it next
	// to its node agent, inside the tier's network namespace.
	proxySubcommand = "proxy"
)

// component is what a Kubernetes component's cobra command offers us.
type component interface {
	SetArgs(args []string)
	Execute() error
}

// components: the hidden subcommands that run a real Kubernetes component from
// this binary (kube-controller-manager and kube-scheduler as children of the
// control plane, kube-proxy started by the full-stack tier).
var components = map[string]func() component{
	controllerManagerSubcommand: func() component { return kcmapp.NewControllerManagerCommand() },
	schedulerSubcommand:         func() component { return schedapp.NewSchedulerCommand() },
	proxySubcommand:             func() component { return proxyapp.NewProxyCommand() },
}

// logger is our own: kube-apiserver redirects the standard "log" package
// into klog at start-up, which would re-format our lines.
var logger = log.New(os.Stderr, "kindex-testenv: ", log.Ltime|log.Lmicroseconds)

// listFlag collects a repeatable string flag.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, " ") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

type options struct {
	dir, kubeconfigOut, adminToken string
	port                           int
	bindAddress                    string
	keep, controllerManager        bool
	scheduler                      bool
	maxLifetime, readyTimeout      time.Duration
	extraTokens, apiserverArgs     listFlag
	kcmArgs, servingIPs            listFlag
	schedulerArgs                  listFlag
}

func main() {
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "kubeconfig":
			if err := kubeconfigCmd(os.Args[2:]); err != nil {
				logger.Fatal(err)
			}
			return
		default:
			if newCmd, ok := components[os.Args[1]]; ok {
				// Runs the real component's command with the given args.
				cmd := newCmd()
				cmd.SetArgs(os.Args[2:])
				if err := cmd.Execute(); err != nil {
					os.Exit(1)
				}
				return
			}
		}
	}
	os.Exit(run(os.Args[1:]))
}

func parseFlags(args []string) (*options, error) {
	o := &options{}
	// Our own FlagSet: the Kubernetes packages register flags of their own
	// and must not see (or clash with) ours.
	fs := flag.NewFlagSet("kindex-testenv", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `Usage:
  kindex-testenv [flags]       start etcd + kube-apiserver on 127.0.0.1; prints "READY <kubeconfig>"
  kindex-testenv kubeconfig --from KUBECONFIG --token TOKEN [--user NAME] --out PATH
                               write a kubeconfig for the same server with another bearer token
Flags:
`)
		fs.PrintDefaults()
	}
	fs.StringVar(&o.dir, "dir", "", "work directory for etcd data, certificates and tokens (default: a new temporary directory, removed at exit unless --keep; a given --dir is never removed)")
	fs.BoolVar(&o.keep, "keep", false, "keep the temporary work directory at exit")
	fs.StringVar(&o.kubeconfigOut, "kubeconfig-out", "", "where to write the admin kubeconfig (default: DIR/kubeconfig)")
	fs.IntVar(&o.port, "port", 0, "kube-apiserver secure port on 127.0.0.1 (0: pick a free port)")
	fs.StringVar(&o.adminToken, "admin-token", "", "bearer token of the admin user (group system:masters); default: random")
	fs.DurationVar(&o.maxLifetime, "max-lifetime", 60*time.Minute, "exit by itself after this long")
	fs.DurationVar(&o.readyTimeout, "ready-timeout", 3*time.Minute, "fail if the control plane is not ready after this long")
	fs.BoolVar(&o.controllerManager, "controller-manager", false, "also run kube-controller-manager (garbage collector, StatefulSet, ServiceAccount, ... controllers)")
	fs.StringVar(&o.bindAddress, "bind-address", "127.0.0.1", "kube-apiserver bind address; anything but 127.0.0.1 only inside a network namespace the test created (the full-stack tier binds 0.0.0.0 in its own namespace)")
	fs.Var(&o.servingIPs, "serving-ip", "extra IP address in the serving certificate, e.g. the tier bridge address pods reach the API server on (repeatable)")
	fs.BoolVar(&o.scheduler, "scheduler", false, "also run kube-scheduler (needs --controller-manager to be useful: PVC binding, StatefulSets)")
	fs.Var(&o.schedulerArgs, "scheduler-arg", "extra kube-scheduler flag (repeatable)")
	fs.Var(&o.extraTokens, "extra-token", "add a static token user: TOKEN,USER,UID[,GROUP1,GROUP2...] (repeatable)")
	fs.Var(&o.apiserverArgs, "apiserver-arg", "extra kube-apiserver flag, e.g. --apiserver-arg=--v=2 (repeatable; later flags win)")
	fs.Var(&o.kcmArgs, "controller-manager-arg", "extra kube-controller-manager flag (repeatable)")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	return o, nil
}

// stopRequested is the cause of a stop asked for from outside (signal or
// --max-lifetime), as opposed to a component failing.
type stopRequested struct{ why string }

func (s stopRequested) Error() string { return s.why }

func run(args []string) int {
	o, err := parseFlags(args)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		logger.Print(err)
		return 2
	}
	start := time.Now()

	// runCtx ends on the first of: SIGINT/SIGTERM, --max-lifetime, a
	// component exiting. Every wait below is bounded by it.
	runCtx, stopRun := context.WithCancelCause(context.Background())
	defer stopRun(nil)
	sigCh := make(chan os.Signal, 1)
	signal.Notify(sigCh, syscall.SIGINT, syscall.SIGTERM)
	// kube-apiserver's command installs its own SIGINT/SIGTERM handler
	// (genericapiserver.SetupSignalContext), which is the only way to start
	// its graceful shutdown; a SECOND signal makes it os.Exit(1). So it is
	// created right after our handler, and we signal ourselves once at most.
	apiCmd := app.NewAPIServerCommand()
	var signalled atomic.Bool // the apiserver has already seen a signal
	go func() {
		select {
		case s := <-sigCh:
			signalled.Store(true)
			stopRun(stopRequested{fmt.Sprintf("received %v", s)})
		case <-time.After(o.maxLifetime):
			stopRun(stopRequested{fmt.Sprintf("max lifetime %v reached", o.maxLifetime)})
		case <-runCtx.Done():
		}
	}()

	dir := o.dir
	if dir == "" {
		if dir, err = os.MkdirTemp("", "kindex-testenv-"); err != nil {
			logger.Print(err)
			return 1
		}
		if !o.keep {
			defer func() {
				if err := os.RemoveAll(dir); err != nil {
					logger.Printf("remove %s: %v", dir, err)
				}
			}()
		}
	} else if err := os.MkdirAll(dir, 0o700); err != nil {
		logger.Print(err)
		return 1
	}
	logger.Printf("work directory %s", dir)
	if o.kubeconfigOut == "" {
		o.kubeconfigOut = filepath.Join(dir, "kubeconfig")
	}
	if o.kubeconfigOut, err = filepath.Abs(o.kubeconfigOut); err != nil {
		logger.Print(err)
		return 1
	}

	_, svcNet, _ := net.ParseCIDR(serviceCIDR)
	svcIP := svcNet.IP.To4()
	kubernetesSvcIP := net.IPv4(svcIP[0], svcIP[1], svcIP[2], svcIP[3]+1) // the "kubernetes" Service
	extraIPs := make([]net.IP, 0, len(o.servingIPs))
	for _, s := range o.servingIPs {
		ip := net.ParseIP(s)
		if ip == nil {
			logger.Printf("--serving-ip %q: not an IP address", s)
			return 2
		}
		extraIPs = append(extraIPs, ip)
	}
	pki, err := generatePKI(dir, kubernetesSvcIP, extraIPs...)
	if err != nil {
		logger.Printf("generate certificates: %v", err)
		return 1
	}
	if o.adminToken == "" {
		o.adminToken = randomToken()
	}
	tokenFile := filepath.Join(dir, "tokens.csv")
	if err := writeTokenFile(tokenFile, o.adminToken, o.extraTokens); err != nil {
		logger.Print(err)
		return 1
	}

	etcd, etcdURL, err := startEtcd(filepath.Join(dir, "etcd"))
	if err != nil {
		logger.Print(err)
		return 1
	}
	defer func() {
		etcd.Close()
		logger.Print("etcd stopped")
	}()
	logger.Printf("etcd ready at %s after %v", etcdURL, time.Since(start).Round(time.Millisecond))

	port := o.port
	if port == 0 {
		if port, err = freePort(); err != nil {
			logger.Print(err)
			return 1
		}
	}
	server := fmt.Sprintf("https://127.0.0.1:%d", port)
	if err := writeKubeconfig(o.kubeconfigOut, server, pki.caPEM, adminUser, o.adminToken); err != nil {
		logger.Print(err)
		return 1
	}
	if runCtx.Err() != nil {
		logger.Printf("stopping: %v", context.Cause(runCtx))
		return 1
	}

	// kube-apiserver runs in this process, through the very cobra command of
	// the kube-apiserver binary, so flags mean exactly what they mean there.
	apiCmd.SetArgs(append([]string{
		"--etcd-servers=" + etcdURL,
		"--bind-address=" + o.bindAddress,
		"--advertise-address=127.0.0.1",
		fmt.Sprintf("--secure-port=%d", port),
		"--tls-cert-file=" + pki.ServingCert,
		"--tls-private-key-file=" + pki.ServingKey,
		"--cert-dir=" + filepath.Join(dir, "certs"), // unused with the files above; keeps the default (/var/run/kubernetes) out
		"--token-auth-file=" + tokenFile,
		"--authorization-mode=RBAC",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + pki.SAPub,
		"--service-account-signing-key-file=" + pki.SAKey,
		"--service-cluster-ip-range=" + serviceCIDR,
		"--allow-privileged=true",
		// API Priority and Fairness only matters under overload; turning it
		// off saves its bootstrap objects and controllers at start-up.
		"--enable-priority-and-fairness=false",
		"--profiling=false",
		// The "kubernetes" Service's Endpoints may not hold a loopback
		// address; without this the apiserver logs an error every 10 s.
		"--endpoint-reconciler-type=none",
		// The default admission plugins are kept (ServiceAccount,
		// NamespaceLifecycle, ResourceQuota, PodSecurity, webhooks, ...) so
		// that tests see what a real cluster does.
	}, o.apiserverArgs...))
	apiDone := make(chan struct{})
	go func() {
		err := apiCmd.Execute()
		close(apiDone)
		stopRun(fmt.Errorf("kube-apiserver exited: %v", err))
	}()
	// Deferred: stop kube-apiserver before etcd (defers run in reverse order).
	defer func() {
		select {
		case <-apiDone:
			return
		default:
		}
		if !signalled.Load() {
			_ = syscall.Kill(os.Getpid(), syscall.SIGTERM)
		}
		select {
		case <-apiDone:
			logger.Print("kube-apiserver stopped")
		case <-time.After(30 * time.Second):
			logger.Print("kube-apiserver did not stop within 30s")
		}
	}()

	client := httpClient(pki.caPEM, o.adminToken)
	readyCtx, cancelReady := context.WithTimeout(runCtx, o.readyTimeout)
	defer cancelReady()
	if err := waitOK(readyCtx, client, server+"/readyz"); err != nil {
		logger.Printf("kube-apiserver not ready: %v (%v)", err, context.Cause(readyCtx))
		return 1
	}
	logger.Printf("kube-apiserver ready at %s after %v", server, time.Since(start).Round(time.Millisecond))

	if o.controllerManager {
		kcm, kcmDone, err := startControllerManager(o.kubeconfigOut, pki, o.kcmArgs)
		if err != nil {
			logger.Print(err)
			return 1
		}
		go func() {
			<-kcmDone
			stopRun(fmt.Errorf("kube-controller-manager exited: %v", kcm.ProcessState))
		}()
		defer stopProcess(kcm, kcmDone, "kube-controller-manager")
		// The ServiceAccount controller creating default/default proves the
		// controllers are running and can write; pods need that account anyway.
		if err := waitOK(readyCtx, client, server+"/api/v1/namespaces/default/serviceaccounts/default"); err != nil {
			logger.Printf("kube-controller-manager not ready: %v (%v)", err, context.Cause(readyCtx))
			return 1
		}
		logger.Printf("kube-controller-manager ready after %v", time.Since(start).Round(time.Millisecond))
	}
	if o.scheduler {
		sched, schedDone, err := startChild("kube-scheduler", schedulerSubcommand,
			append([]string{"--kubeconfig=" + o.kubeconfigOut, "--leader-elect=false", "--secure-port=0"},
				o.schedulerArgs...)...)
		if err != nil {
			logger.Print(err)
			return 1
		}
		go func() {
			<-schedDone
			stopRun(fmt.Errorf("kube-scheduler exited: %v", sched.ProcessState))
		}()
		defer stopProcess(sched, schedDone, "kube-scheduler")
	}

	fmt.Printf("READY %s\n", o.kubeconfigOut)
	logger.Printf("server %s, admin kubeconfig %s; stop with SIGTERM (max lifetime %v)", server, o.kubeconfigOut, o.maxLifetime)

	<-runCtx.Done()
	cause := context.Cause(runCtx)
	logger.Printf("stopping: %v", cause)
	if errors.As(cause, new(stopRequested)) {
		return 0
	}
	return 1
}

// writeTokenFile writes kube-apiserver's --token-auth-file: CSV lines
// "token,user,uid,"group1,group2"". The admin is in system:masters, which
// RBAC always allows; extra users get only what RBAC objects grant them.
func writeTokenFile(path, adminToken string, extra []string) error {
	rows := [][]string{{adminToken, adminUser, adminUser, "system:masters"}}
	for _, e := range extra {
		parts := strings.SplitN(e, ",", 4)
		if len(parts) < 3 || parts[0] == "" || parts[1] == "" || parts[2] == "" {
			return fmt.Errorf("--extra-token %q: want TOKEN,USER,UID[,GROUP1,GROUP2...]", e)
		}
		if len(parts) == 3 {
			parts = append(parts, "")
		}
		rows = append(rows, parts)
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	w := csv.NewWriter(f) // quotes the group list, which contains commas
	if err := w.WriteAll(rows); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// startControllerManager runs kube-controller-manager as a child process of
// this same binary (hidden subcommand). It is not run in-process because it
// shares process-global state with kube-apiserver (feature-gate and
// component-version registry, legacy Prometheus registry, client-go warning
// handler) and its Run takes context.Background(), so it could not be
// stopped; a child process is isolated and is stopped with a signal.
func startControllerManager(kubeconfig string, pki *pkiFiles, extra []string) (*exec.Cmd, chan struct{}, error) {
	args := append([]string{controllerManagerSubcommand,
		"--kubeconfig=" + kubeconfig,
		"--leader-elect=false",
		"--secure-port=0", // no health/metrics endpoint needed; avoids a second port
		"--service-account-private-key-file=" + pki.SAKey,
		"--root-ca-file=" + pki.CACert,
		"--cluster-signing-cert-file=" + pki.CACert,
		"--cluster-signing-key-file=" + pki.CAKey,
		"--use-service-account-credentials=false",
		"--controllers=*",
	}, extra...)
	return startChild("kube-controller-manager", args[0], args[1:]...)
}

// startChild runs this binary with a hidden subcommand as a child process
// that the kernel kills if this process dies.
func startChild(name, subcommand string, args ...string) (*exec.Cmd, chan struct{}, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, nil, err
	}
	cmd := exec.Command(self, append([]string{subcommand}, args...)...)
	cmd.Stdout = os.Stderr // stdout is reserved for the READY line
	cmd.Stderr = os.Stderr
	setParentDeathSignal(cmd)

	// The parent-death signal fires when the OS *thread* that forked the
	// child exits, not the process. Start and wait from one goroutine locked
	// to its thread, so that thread lives exactly as long as the child.
	started := make(chan error, 1)
	done := make(chan struct{}) // closed once the child has been waited for
	go func() {
		runtime.LockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		_ = cmd.Wait()
		close(done)
	}()
	if err := <-started; err != nil {
		return nil, nil, fmt.Errorf("start %s: %w", name, err)
	}
	logger.Printf("%s started (pid %d)", name, cmd.Process.Pid)
	return cmd, done, nil
}

// stopProcess sends SIGTERM, then SIGKILL after 10 s; done is closed when
// the process has been waited for.
func stopProcess(cmd *exec.Cmd, done chan struct{}, name string) {
	select {
	case <-done: // already gone
		return
	default:
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Kill()
		<-done
	}
	logger.Printf("%s stopped", name)
}

func httpClient(caPEM []byte, token string) *http.Client {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	return &http.Client{
		Timeout:   5 * time.Second,
		Transport: &bearerTransport{token: token, rt: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}},
	}
}

type bearerTransport struct {
	token string
	rt    http.RoundTripper
}

func (t *bearerTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+t.token)
	return t.rt.RoundTrip(r)
}

// waitOK polls url until it answers 200 or ctx ends; the error says what
// the last attempt saw.
func waitOK(ctx context.Context, c *http.Client, url string) error {
	last := "no answer yet"
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := c.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = resp.Status
		} else {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %s", url, last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func randomToken() string {
	b := make([]byte, 24)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}
