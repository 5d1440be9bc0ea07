// kill -9 the server while usage batches are in flight, restart it on the same port and data
// directory, and check that the UsageSender's reconnect-and-resend loses nothing acknowledged and
// counts nothing twice (the Go side of tests/test_crash.py).

package tariff_test

import (
	"context"
	"fmt"
	"math/big"
	"sync"
	"testing"
	"time"

	tariff "github.com/tariff/tariff/clients/go"
	tariffv1 "github.com/tariff/tariff/clients/go/gen/tariff/v1"
)

func TestKill9MidStreamCountsEveryEventOnce(t *testing.T) {
	const eventCount, batchEventsMax, killAfterAcks = 4_000, 50, 5
	srv := startServer(t)
	client := newClient(t, srv.target(), tariff.Options{})
	ctx := context.Background()

	var (
		mu              sync.Mutex
		ackedBatchIDs   = map[string]int{}
		ackedEvents     int
		restarted       chan error
		inFlightAtKill  int
		ackedBeforeKill int
	)
	var sender *tariff.UsageSender
	sender, err := client.NewUsageSender(tariff.SenderOptions{
		BatchEventsMax:  batchEventsMax,
		BufferEventsMax: 1_000,
		Retry: &tariff.RetryPolicy{
			AttemptsMax: 200, ElapsedMax: 30 * time.Second, InitialBackoff: 50 * time.Millisecond,
			MaxBackoff: 250 * time.Millisecond, Multiplier: 2, Jitter: 0.2,
			RetryableCodes: tariff.DefaultRetryPolicy().RetryableCodes,
		},
		OnAck: func(ack *tariffv1.IngestAck, batch *tariffv1.UsageBatch) {
			mu.Lock()
			defer mu.Unlock()
			ackedBatchIDs[ack.GetBatchId()]++
			ackedEvents += len(batch.GetEvents())
			if len(ackedBatchIDs) == killAfterAcks && restarted == nil {
				// From inside the ack: the producer is ahead, so batches are in flight.
				stats := sender.Stats()
				inFlightAtKill = stats.BatchesSent - stats.BatchesAcked
				ackedBeforeKill = stats.EventsAccepted
				srv.kill9()
				restarted = make(chan error, 1)
				go func() { restarted <- srv.start() }()
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sender.Abort()

	runID := fmt.Sprintf("crash-%d", time.Now().UnixNano())
	nowMs := time.Now().UnixMilli()
	expected := new(big.Rat)
	events := make([]*tariffv1.UsageEvent, 0, eventCount)
	for i := range eventCount {
		event, kind := demoEvent(runID, i, nowMs)
		events = append(events, event)
		expected.Add(expected, decimal(t, kind.price))
		if err := sender.Send(ctx, event); err != nil {
			t.Fatalf("send %d: %v", i, err)
		}
	}
	stats, err := sender.Close(ctx)
	if err != nil {
		t.Fatalf("close: %v (stats %+v)", err, stats)
	}
	mu.Lock()
	defer mu.Unlock()
	if restarted == nil {
		t.Fatal("the server was never killed")
	}
	if err := <-restarted; err != nil {
		t.Fatal(err)
	}
	t.Logf("sender: %+v; batches in flight at the kill: %d", stats, inFlightAtKill)
	if srv.starts != 2 || inFlightAtKill <= 0 {
		t.Fatalf("starts %d, batches in flight at the kill %d: the kill was not mid-stream", srv.starts, inFlightAtKill)
	}
	if stats.Reconnects < 1 || stats.ResentBatches < 1 {
		t.Fatalf("no reconnect and resend: %+v", stats)
	}
	// Every batch acked exactly once; accepted + duplicates covers every event, none rejected.
	for id, n := range ackedBatchIDs {
		if n != 1 {
			t.Fatalf("batch %s acked %d times", id, n)
		}
	}
	if ackedEvents != eventCount || stats.EventsAccepted+stats.EventsDuplicate != eventCount || stats.EventsRejected != 0 {
		t.Fatalf("acked events %d, stats %+v; want %d", ackedEvents, stats, eventCount)
	}
	// Duplicates can only come from resent batches (committed before the kill, ack lost).
	if stats.EventsDuplicate > stats.ResentBatches*batchEventsMax || ackedBeforeKill <= 0 || ackedBeforeKill >= eventCount {
		t.Fatalf("duplicates %d from %d resent batches; %d accepted before the kill", stats.EventsDuplicate, stats.ResentBatches, ackedBeforeKill)
	}

	// The balance counts every event exactly once: nothing acknowledged lost, nothing doubled.
	balance, err := client.GetBalance(ctx, customer)
	if err != nil {
		t.Fatal(err)
	}
	want := new(big.Rat).Sub(decimal(t, prepaidCredits), expected)
	if got := decimal(t, balance.GetCreditsRemaining()); got.Cmp(want) != 0 {
		t.Fatalf("credits remaining %s, want %s", got.RatString(), want.RatString())
	}
	// And all of them are durable: resending everything is all duplicates.
	ack, err := client.IngestBatch(ctx, &tariffv1.UsageBatch{BatchId: runID + "-check", Events: events})
	if err != nil || ack.GetAccepted() != 0 || ack.GetDuplicates() != eventCount {
		t.Fatalf("resending everything: ack accepted %d duplicates %d, err %v", ack.GetAccepted(), ack.GetDuplicates(), err)
	}
}
