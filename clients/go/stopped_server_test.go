// A UsageSender against a server that accepts TCP connections but never answers (a SIGSTOPped
// process: the kernel still completes the handshake into the listen backlog) gives up within about
// its Retry.ElapsedMax, with UNAVAILABLE. It took ElapsedMax plus grpc-go's connect timeout (the
// client's MinConnectTimeout, 5 s) plus a reconnect's: 8 s for an ElapsedMax of 2 s.

package tariff_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	tariff "github.com/tariff/tariff/clients/go"
	tariffv1 "github.com/tariff/tariff/clients/go/gen/tariff/v1"
)

// stopServer SIGSTOPs the server; the test's cleanup SIGCONTs it before stopping it.
func stopServer(t *testing.T, srv *server) {
	t.Helper()
	srv.mu.Lock()
	process := srv.cmd.Process
	srv.mu.Unlock()
	if err := process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = process.Signal(syscall.SIGCONT) }) // runs before startServer's stop
	// kill(2) returns before every thread has stopped: wait until they all have.
	tasks := fmt.Sprintf("/proc/%d/task", process.Pid)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if allStopped(t, tasks) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("server %d not stopped 10 s after SIGSTOP", process.Pid)
		}
	}
}

// allStopped says whether every thread under /proc/<pid>/task is in state T (stopped).
func allStopped(t *testing.T, tasks string) bool {
	t.Helper()
	entries, err := os.ReadDir(tasks)
	if err != nil {
		t.Fatal(err)
	}
	for _, entry := range entries {
		stat, err := os.ReadFile(filepath.Join(tasks, entry.Name(), "stat"))
		if err != nil {
			return false // a thread that just exited
		}
		// pid (comm) state ...: comm may hold spaces and parentheses, the state follows the last ")".
		fields := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
		if len(fields) == 0 || fields[0] != "T" {
			return false
		}
	}
	return true
}

func TestASenderGivesUpWithinAboutElapsedMaxOnAServerThatNeverAnswers(t *testing.T) {
	srv := startServer(t)
	stopServer(t, srv)
	client := newClient(t, srv.target(), tariff.Options{})
	policy := tariff.DefaultRetryPolicy()
	policy.AttemptsMax, policy.ElapsedMax = 1_000, 2*time.Second
	sender, err := client.NewUsageSender(tariff.SenderOptions{Retry: &policy})
	if err != nil {
		t.Fatal(err)
	}
	defer sender.Abort()
	event, _ := demoEvent(fmt.Sprintf("stopped-%d", time.Now().UnixNano()), 0, time.Now().UnixMilli())

	// Bounds the test, far above both the fixed and the broken behaviour.
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	started := time.Now()
	_, err = sender.SendBatch(ctx, []*tariffv1.UsageEvent{event}, "")
	elapsed := time.Since(started)
	if errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("the sender had not given up after %s (ElapsedMax 2 s); server log:\n%s", elapsed, srv.logTail())
	}
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("want UNAVAILABLE, got %v", err)
	}
	// A bound on a failure mode, not a speed measurement: at most ElapsedMax + MinConnect (3 s) is
	// promised; it took 8 s.
	if elapsed >= 6*time.Second {
		t.Fatalf("gave up after %s with ElapsedMax 2 s: %v", elapsed, err)
	}
	t.Logf("gave up after %s: %v", elapsed, err)
}

func TestASenderWithAlmostNoRetryBudgetStillSendsToAServerThatAnswers(t *testing.T) {
	// Waiting for a connection to a live server is not a failure, and waits at least MinConnect.
	srv := startServer(t)
	client := newClient(t, srv.target(), tariff.Options{})
	policy := tariff.DefaultRetryPolicy()
	policy.ElapsedMax = time.Nanosecond
	sender, err := client.NewUsageSender(tariff.SenderOptions{Retry: &policy})
	if err != nil {
		t.Fatal(err)
	}
	defer sender.Abort()
	event, _ := demoEvent(fmt.Sprintf("live-%d", time.Now().UnixNano()), 0, time.Now().UnixMilli())
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	ack, err := sender.SendBatch(ctx, []*tariffv1.UsageEvent{event}, "")
	if err != nil {
		t.Fatal(err)
	}
	if ack.GetAccepted() != 1 {
		t.Fatalf("want 1 event accepted, got %v", ack)
	}
}

// README: "for up to Retry.ElapsedMax (60 s by default) or Retry.AttemptsMax failed streams in a row (10)": against a
// port nobody listens on, with the delays cut to 1 ms, the default ten refusals end the sender long before 60 s.
func TestByDefaultASenderGivesUpAfterTenFailedStreamsBeforeElapsedMax(t *testing.T) {
	probe, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	target := probe.Addr().String()
	_ = probe.Close()
	client := newClient(t, target, tariff.Options{})
	policy := tariff.RetryPolicy{InitialBackoff: time.Millisecond, MaxBackoff: time.Millisecond}
	sender, err := client.NewUsageSender(tariff.SenderOptions{Retry: &policy})
	if err != nil {
		t.Fatal(err)
	}
	defer sender.Abort()
	event, _ := demoEvent(fmt.Sprintf("refused-%d", time.Now().UnixNano()), 0, time.Now().UnixMilli())
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	_, err = sender.SendBatch(ctx, []*tariffv1.UsageEvent{event}, "")
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "after 10 failed streams") {
		t.Fatalf("want UNAVAILABLE after 10 failed streams, got %v", err)
	}
	if reconnects := sender.Stats().Reconnects; reconnects != 9 {
		t.Fatalf("want ten streams (the first and 9 reconnects), got %d reconnects", reconnects)
	}
}

// A server stopped mid-stream (after a first ack) is noticed after AckTimeout without an ack; the
// reconnects then follow the retry policy. They did not: the stopped server's connection stays open
// (no keepalive), so each new stream on it counted as connected and waited another whole
// AckTimeout (an ElapsedMax of 2 s gave up 120 s after the server stopped, not about 62 s). Each
// stream now waits for the server's answer (its response headers, sent with its first ack) as it
// waits for its connection.
func TestASenderWhoseServerStopsMidStreamGivesUpAfterTheAckTimeoutPlusTheRetryBudget(t *testing.T) {
	const ackTimeout = 8 * time.Second
	srv := startServer(t)
	client := newClient(t, srv.target(), tariff.Options{})
	policy := tariff.DefaultRetryPolicy()
	policy.ElapsedMax = time.Second
	sender, err := client.NewUsageSender(tariff.SenderOptions{Retry: &policy, AckTimeout: ackTimeout})
	if err != nil {
		t.Fatal(err)
	}
	defer sender.Abort()
	runID := fmt.Sprintf("midstop-%d", time.Now().UnixNano())
	first, _ := demoEvent(runID, 0, time.Now().UnixMilli())
	if _, err := sender.SendBatch(context.Background(), []*tariffv1.UsageEvent{first}, ""); err != nil {
		t.Fatal(err)
	}
	stopServer(t, srv)
	second, _ := demoEvent(runID, 1, time.Now().UnixMilli())
	// Bounds the test, far above both the fixed and the broken behaviour.
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	started := time.Now()
	_, err = sender.SendBatch(ctx, []*tariffv1.UsageEvent{second}, "")
	elapsed := time.Since(started)
	// A bound on a failure mode, not a speed measurement: AckTimeout + ElapsedMax + MinConnect (10 s)
	// is promised; each reconnect waited another AckTimeout (16 s and more).
	if elapsed >= ackTimeout+4*time.Second {
		t.Fatalf("gave up after %s with AckTimeout %s and ElapsedMax 1 s: %v", elapsed, ackTimeout, err)
	}
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "no answer from the server within") {
		t.Fatalf("want UNAVAILABLE, no answer from the server, got %v", err)
	}
	t.Logf("gave up after %s: %v", elapsed, err)
}
