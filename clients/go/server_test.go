// Runs a real Tariff server process on 127.0.0.1 for the integration tests (the Go twin of
// tests/serverproc.py and the TypeScript client's test/support/server.ts): free port,
// `python -m server.cli serve ... --demo`, wait for grpc.health.v1 SERVING, kill -9, start again on
// the same port and data directory, stop. The Python interpreter is $TARIFF_PYTHON, by default
// the repository's .venv/bin/python; the server's output goes to <dataDir>.server.log.

package tariff_test

import (
	"context"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	tariff "github.com/tariff/tariff/clients/go"
	tariffv1 "github.com/tariff/tariff/clients/go/gen/tariff/v1"
)

// The demo catalogue (server/demo.py): customer acme holds 50,000 prepaid credits.
const (
	customer        = "acme"
	eventType       = "ai_action"
	prepaidCredits  = "50000"
	repoRootRelPath = "../.."
)

// eventKind is one demo AI action and its price in credits.
type eventKind struct {
	dimensions map[string]string
	price      string
}

var eventKinds = []eventKind{
	{map[string]string{"action": "summary", "model": "gpt-4", "complexity": "complex", "data_source": "crm"}, "5"},
	{map[string]string{"action": "summary", "model": "gpt-4", "complexity": "simple", "data_source": "crm"}, "2.5"},
	{map[string]string{"action": "summary", "model": "gpt-4o-mini", "complexity": "simple", "data_source": "crm"}, "0.5"},
	{map[string]string{"action": "summary", "model": "gpt-4o-mini", "complexity": "complex", "data_source": "web"}, "1"},
}

// demoEvent is event i of a run: kinds in rotation, so the expected total is known exactly.
func demoEvent(runID string, i int, timestampMs int64) (*tariffv1.UsageEvent, eventKind) {
	kind := eventKinds[i%len(eventKinds)]
	return &tariffv1.UsageEvent{
		TransactionId: fmt.Sprintf("%s-%d", runID, i),
		CustomerId:    customer,
		EventType:     eventType,
		TimestampMs:   timestampMs,
		Dimensions:    kind.dimensions,
	}, kind
}

// decimal parses a decimal string from the wire exactly (never through a float).
func decimal(t *testing.T, s string) *big.Rat {
	t.Helper()
	value, ok := new(big.Rat).SetString(s)
	if !ok {
		t.Fatalf("not a decimal: %q", s)
	}
	return value
}

func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs(repoRootRelPath)
	if err != nil {
		t.Fatal(err)
	}
	return root
}

func pythonPath(t *testing.T) string {
	t.Helper()
	python := os.Getenv("TARIFF_PYTHON")
	if python == "" {
		python = filepath.Join(repoRoot(t), ".venv", "bin", "python")
	}
	if _, err := os.Stat(python); err != nil {
		t.Fatalf("no Python at %s: run `make install` or set TARIFF_PYTHON", python)
	}
	return python
}

// freePort is a TCP port on 127.0.0.1 that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer listener.Close()
	return listener.Addr().(*net.TCPAddr).Port
}

type server struct {
	t       *testing.T
	dataDir string
	logPath string
	args    []string
	port    int
	// clientOpts reach the server for the readiness check.
	clientOpts tariff.Options
	starts     int

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
}

// startServer runs a demo server (plus extraArgs) in a fresh temporary directory; the test's
// cleanup stops it.
func startServer(t *testing.T, extraArgs ...string) *server {
	t.Helper()
	return startServerWith(t, tariff.Options{}, extraArgs...)
}

// startServerWith is startServer for a server that its readiness check reaches with these options (TLS).
func startServerWith(t *testing.T, opts tariff.Options, extraArgs ...string) *server {
	t.Helper()
	dir := t.TempDir()
	s := &server{t: t, dataDir: filepath.Join(dir, "data"), logPath: filepath.Join(dir, "server.log"), args: extraArgs, port: freePort(t), clientOpts: opts}
	t.Cleanup(s.stop)
	if err := s.start(); err != nil {
		t.Fatal(err)
	}
	return s
}

func (s *server) target() string {
	return fmt.Sprintf("127.0.0.1:%d", s.port)
}

// start spawns the server and waits until it answers SERVING (or exits, or 30 s pass).
func (s *server) start() error {
	args := append([]string{"-m", "server.cli", "serve", "--listen", s.target(), "--data-dir", s.dataDir, "--demo"}, s.args...)
	log, err := os.OpenFile(s.logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	defer log.Close()
	cmd := exec.Command(pythonPath(s.t), args...)
	cmd.Dir = repoRoot(s.t)
	cmd.Env = append(os.Environ(), "PYTHONUNBUFFERED=1")
	cmd.Stdout, cmd.Stderr = log, log
	// Its own process group: a Ctrl-C on the test run does not reach it first.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	s.mu.Lock()
	s.cmd, s.exited = cmd, exited
	s.starts++
	s.mu.Unlock()

	client, err := tariff.New(s.target(), s.clientOpts)
	if err != nil {
		return err
	}
	defer client.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	go func() {
		select {
		case <-exited:
			cancel()
		case <-ctx.Done():
		}
	}()
	if err := client.WaitReady(ctx); err != nil {
		s.kill9()
		return fmt.Errorf("server not SERVING on %s: %w\nlog tail:\n%s", s.target(), err, s.logTail())
	}
	return nil
}

// kill9 is a crash: SIGKILL, nothing gets to flush; it returns once the process has exited.
func (s *server) kill9() {
	s.mu.Lock()
	cmd, exited := s.cmd, s.exited
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	<-exited
}

// stop sends SIGTERM, then SIGKILL after 10 s.
func (s *server) stop() {
	s.mu.Lock()
	cmd, exited := s.cmd, s.exited
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		s.kill9()
	}
}

func (s *server) logTail() string {
	text, err := os.ReadFile(s.logPath)
	if err != nil {
		return "(no log)"
	}
	lines := strings.Split(string(text), "\n")
	return strings.Join(lines[max(0, len(lines)-40):], "\n")
}

func newClient(t *testing.T, target string, opts tariff.Options) *tariff.Client {
	t.Helper()
	client, err := tariff.New(target, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Close() })
	return client
}
