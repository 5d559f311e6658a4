package k8s

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/seed-a88e5317/resilience-sidecar/internal/testharness"
	"github.com/seed-a88e5317/resilience-sidecar/internal/testkit"
)

// kubeVersion is the kube-apiserver release the tests run, built by
// scripts/build-kube-apiserver.sh (its KUBE_VERSION default must match:
// TestKubeAPIServerVersion checks both).
const kubeVersion = "v1.37.2"

// Environment variables that override where the binaries are found.
const (
	// kubeAPIServerEnv: the kube-apiserver binary (default:
	// .bin/kube-apiserver-<kubeVersion> under the repository's root).
	kubeAPIServerEnv = "KUBE_APISERVER_BIN"
	// etcdEnv: the etcd binary (default: etcd on PATH).
	etcdEnv = "ETCD_BIN"
)

// Bounds for a loaded two-core machine, never timing assertions.
const (
	startTimeout  = 2 * time.Minute
	effectTimeout = time.Minute // until a configuration change takes effect
)

// adminToken authenticates the tests as a member of system:masters.
const adminToken = "e2e-admin-token"

// env is the cluster TestMain starts for every test of the package.
var env *cluster

func TestMain(m *testing.M) {
	testkit.MainWith(m, func(tb *testkit.MainTB) { env = startCluster(tb) })
}

// cluster is etcd, kube-apiserver and the injector on loopback, with the
// webhook and the admission policies of deploy/k8s registered.
type cluster struct {
	root      string // the repository's root
	dir       string // logs, certificates, etcd's data
	apiserver *process
	apiCAFile string // the PEM CA of the API server's serving certificate
	admin     *kube
	injector  *injector
	started   time.Duration // how long startCluster took to reach a usable API server
}

func startCluster(tb *testkit.MainTB) *cluster {
	begin := time.Now()
	root, err := moduleRoot()
	if err != nil {
		tb.Fatalf("%v", err)
	}
	apiserverBin := binary(tb, kubeAPIServerEnv, filepath.Join(root, ".bin", "kube-apiserver-"+kubeVersion),
		"scripts/build-kube-apiserver.sh (or make k8s-deps)")
	etcdBin := binary(tb, etcdEnv, "etcd", "scripts/ensure-etcd.sh (or make k8s-deps)")
	dir, err := os.MkdirTemp("", "e2e-k8s-")
	if err != nil {
		tb.Fatalf("%v", err)
	}
	tb.Cleanup(func() {
		if tb.Failed() {
			tb.Logf("e2e/k8s: logs kept in %s", dir)
			return
		}
		_ = os.RemoveAll(dir)
	})
	c := &cluster{root: root, dir: dir}

	// The injector is built while etcd and the API server start.
	built := make(chan error, 1)
	injectorBin := filepath.Join(dir, "sidecar-injector")
	go func() { built <- goBuild(root, injectorBin, "./cmd/sidecar-injector") }()

	etcdAddr := startEtcd(tb, dir, etcdBin)
	c.apiserver, c.admin = startAPIServer(tb, dir, apiserverBin, etcdAddr)
	c.apiCAFile = filepath.Join(dir, "apiserver-ca.crt")
	c.started = time.Since(begin)
	tb.Logf("e2e/k8s: kube-apiserver %s ready %v after start", kubeVersion, c.started.Round(time.Millisecond))

	if err := <-built; err != nil {
		tb.Fatalf("%v", err)
	}
	c.injector = newInjector(tb, dir, injectorBin)
	c.injector.start(tb, tb)

	ctx := context.Background()
	if err := c.registerWebhook(ctx, c.injector); err != nil {
		tb.Fatalf("register the webhook: %v", err)
	}
	if err := c.applyFile(ctx, "deploy/k8s/injector/policy.yaml"); err != nil {
		tb.Fatalf("apply the admission policies: %v", err)
	}
	c.waitInEffect(tb)
	tb.Logf("e2e/k8s: cluster ready %v after start", time.Since(begin).Round(time.Millisecond))
	return c
}

// binary finds a program: the path in envVar, else def (a path, or a name
// looked up on PATH). A missing one fails tb, saying what installs it.
func binary(tb testharness.TB, envVar, def, install string) string {
	tb.Helper()
	p := def
	if v := os.Getenv(envVar); v != "" {
		p = v
	}
	found, err := exec.LookPath(p)
	if err != nil {
		tb.Fatalf("e2e/k8s needs %s (%v): run %s, or set %s", p, err, install, envVar)
	}
	abs, err := filepath.Abs(found)
	if err != nil {
		tb.Fatalf("%v", err)
	}
	return abs
}

// goBuild builds pkg of the module at root into out.
func goBuild(root, out, pkg string) error {
	cmd := exec.Command("go", "build", "-o", out, pkg)
	cmd.Dir = root
	if output, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s: %w\n%s", pkg, err, output)
	}
	return nil
}

// startEtcd runs a single-member etcd on free loopback ports, its data in
// dir, and returns its client address once it is healthy.
func startEtcd(tb testharness.TB, dir, bin string) string {
	tb.Helper()
	client, peer := testharness.FreeAddr(tb), testharness.FreeAddr(tb)
	p := startProcess(tb, tb, dir, "etcd", bin,
		"--name=e2e",
		"--data-dir="+filepath.Join(dir, "etcd"),
		"--listen-client-urls=http://"+client,
		"--advertise-client-urls=http://"+client,
		"--listen-peer-urls=http://"+peer,
		"--initial-advertise-peer-urls=http://"+peer,
		"--initial-cluster=e2e=http://"+peer,
		"--log-level=warn",
	)
	hc := &http.Client{Timeout: 2 * time.Second}
	defer hc.CloseIdleConnections()
	waitFor(tb, p, startTimeout, func() error {
		resp, err := hc.Get("http://" + client + "/health")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		var h struct {
			Health string `json:"health"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&h); err != nil {
			return err
		}
		if h.Health != "true" {
			return fmt.Errorf("health %q", h.Health)
		}
		return nil
	})
	return client
}

// startAPIServer runs kube-apiserver on a free loopback port against etcd,
// with a serving certificate for 127.0.0.1, static bearer tokens (the
// admin's, in system:masters) and RBAC, and returns it and an admin client
// once /readyz answers ok.
func startAPIServer(tb testharness.TB, dir, bin, etcdAddr string) (*process, *kube) {
	tb.Helper()
	ca, err := newCA("e2e-kube-apiserver-ca")
	if err != nil {
		tb.Fatalf("%v", err)
	}
	certFile, keyFile := filepath.Join(dir, "apiserver.crt"), filepath.Join(dir, "apiserver.key")
	saKey := filepath.Join(dir, "service-account.key")
	tokens := filepath.Join(dir, "tokens.csv")
	for _, err := range []error{
		ca.issueServing(certFile, keyFile),
		os.WriteFile(filepath.Join(dir, "apiserver-ca.crt"), ca.certPEM, 0o600),
		newECKeyFile(saKey),
		os.WriteFile(tokens, []byte(adminToken+`,e2e-admin,e2e-admin,"system:masters"`+"\n"), 0o600),
	} {
		if err != nil {
			tb.Fatalf("%v", err)
		}
	}
	addr := testharness.FreeAddr(tb)
	_, port, _ := strings.Cut(addr, ":")
	p := startProcess(tb, tb, dir, "kube-apiserver", bin,
		"--etcd-servers=http://"+etcdAddr,
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		"--secure-port="+port,
		"--tls-cert-file="+certFile,
		"--tls-private-key-file="+keyFile,
		"--token-auth-file="+tokens,
		"--authorization-mode=RBAC",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file="+saKey,
		"--service-account-signing-key-file="+saKey,
		"--service-cluster-ip-range=10.96.0.0/16",
		// No Endpoints for the "kubernetes" Service: its address would be
		// loopback, which Endpoints refuse.
		"--endpoint-reconciler-type=none",
		"--allow-privileged=false",
		"--enable-priority-and-fairness=false",
		"--profiling=false",
		"--v=1",
	)
	admin, err := newKube("https://"+addr, adminToken, ca.certPEM)
	if err != nil {
		tb.Fatalf("%v", err)
	}
	tb.Cleanup(admin.close)
	waitFor(tb, p, startTimeout, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err := admin.do(ctx, http.MethodGet, "/readyz", "", nil, nil)
		return err
	})
	return p, admin
}

// injector is the sidecar-injector binary serving the webhook on a fixed
// loopback address, with a certificate for 127.0.0.1 signed by its own CA.
type injector struct {
	bin, dir          string
	addr              string
	certFile, keyFile string
	caPEM             []byte
	owner             testharness.TB // whose Cleanup stops the process
	p                 *process
}

func newInjector(tb testharness.TB, dir, bin string) *injector {
	tb.Helper()
	ca, err := newCA("e2e-injector-ca")
	if err != nil {
		tb.Fatalf("%v", err)
	}
	in := &injector{
		bin: bin, dir: dir, addr: testharness.FreeAddr(tb), owner: tb, caPEM: ca.certPEM,
		certFile: filepath.Join(dir, "injector.crt"), keyFile: filepath.Join(dir, "injector.key"),
	}
	if err := ca.issueServing(in.certFile, in.keyFile); err != nil {
		tb.Fatalf("%v", err)
	}
	return in
}

// url is the webhook's address, as registered with the API server.
func (in *injector) url() string { return "https://" + in.addr + "/mutate" }

// start runs the injector and waits until /healthz answers over TLS; a
// failure fails tb. The process is stopped by in.owner's cleanup (or stop).
func (in *injector) start(tb testharness.TB, owner testharness.TB) {
	tb.Helper()
	in.p = startProcess(tb, owner, in.dir, "sidecar-injector", in.bin,
		"--listen="+in.addr,
		"--tls-cert="+in.certFile,
		"--tls-key="+in.keyFile,
		"--sidecar-image="+sidecarImage,
		"--log-level=debug",
	)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(in.caPEM)
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: 2 * time.Second}
	waitFor(tb, in.p, startTimeout, func() error {
		resp, err := hc.Get("https://" + in.addr + "/healthz")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("/healthz: %s", resp.Status)
		}
		return nil
	})
}

// stop ends the injector (SIGTERM, then SIGKILL) and waits for it.
func (in *injector) stop() { in.p.stop() }

// sidecarImage is the image the injector puts in Pods; nothing pulls it.
const sidecarImage = "ghcr.io/seed-a88e5317/resilience-sidecar:e2e"

// waitInEffect waits until the API server calls the webhook and enforces
// the policies: both are loaded by informers, shortly after they are
// created. It probes with server-side dry runs, which store nothing.
func (c *cluster) waitInEffect(tb testharness.TB) {
	tb.Helper()
	ctx := context.Background()
	labelled, err := c.createNamespace(ctx, "probe-labelled", true)
	if err != nil {
		tb.Fatalf("%v", err)
	}
	unlabelled, err := c.createNamespace(ctx, "probe-unlabelled", false)
	if err != nil {
		tb.Fatalf("%v", err)
	}
	waitFor(tb, c.apiserver, effectTimeout, func() error {
		pod, _, err := c.dryRunPod(ctx, labelled, appPod("probe", injectAnnotations()))
		if err != nil {
			return err
		}
		if !hasSidecar(pod) {
			return errors.New("the webhook is not called yet")
		}
		if _, _, err := c.dryRunPod(ctx, unlabelled, appPod("probe", injectAnnotations())); err == nil ||
			!strings.Contains(err.Error(), "resilience-sidecar-injected") {
			return fmt.Errorf("the policy resilience-sidecar-injected is not enforced yet (%v)", err)
		}
		// The last binding of policy.yaml, a warning on workloads.
		dep := workloadKinds[0].make("probe", template(injectAnnotations()))
		r, err := c.admin.create(ctx, "/apis/apps/v1/namespaces/"+unlabelled+"/deployments?dryRun=All", dep, nil)
		if err != nil {
			return err
		}
		if len(r.warnings) == 0 {
			return errors.New("the policy resilience-sidecar-template-warnings is not in effect yet")
		}
		return nil
	})
}
