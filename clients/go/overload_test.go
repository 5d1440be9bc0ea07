// An overloaded server (--max-concurrent-rpcs) refuses new calls with RESOURCE_EXHAUSTED and a
// google.rpc.RetryInfo ("retry after 100 ms"): the UsageSender waits that long and resends, as it
// does after any other break, instead of failing and dropping its unacknowledged events.

package tariff_test

import (
	"context"
	"testing"
	"time"

	tariff "github.com/tariff/tariff/clients/go"
	tariffv1 "github.com/tariff/tariff/clients/go/gen/tariff/v1"
)

func TestTheUsageSenderWaitsOutAnOverloadedServerAndDeliversEveryEvent(t *testing.T) {
	srv := startServer(t, "--max-concurrent-rpcs", "1")
	holder := newClient(t, srv.target(), tariff.Options{})
	client := newClient(t, srv.target(), tariff.Options{})
	ctx := context.Background()

	// The one call the server runs: every other call is refused, with RetryInfo, while it lasts.
	watchCtx, stopWatching := context.WithCancel(ctx)
	defer stopWatching()
	watch, err := holder.Balance.WatchBalance(watchCtx, &tariffv1.WatchBalanceRequest{CustomerId: customer})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := watch.Recv(); err != nil {
		t.Fatal(err)
	}

	sender, err := client.NewUsageSender(tariff.SenderOptions{BatchEventsMax: 1})
	if err != nil {
		t.Fatal(err)
	}
	event, kind := demoEvent("busy", 0, time.Now().UnixMilli())
	if err := sender.Send(ctx, event); err != nil {
		t.Fatal(err)
	}
	// Until the sender's stream was refused and reopened, or the sender failed (what it did before).
	for safety := time.Now().Add(20 * time.Second); sender.Stats().Reconnects < 1 && sender.Err() == nil; {
		if time.Now().After(safety) {
			t.Fatal("the sender neither reconnected nor failed")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := sender.Err(); err != nil {
		t.Fatalf("the sender gave up on a busy server: %v", err)
	}
	stopWatching() // the server has room again
	stats, err := sender.Close(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if stats.EventsAccepted != 1 || stats.Reconnects < 1 {
		t.Fatalf("stats = %+v, want 1 event accepted after at least one reconnect", stats)
	}
	balance, err := client.GetBalance(ctx, customer)
	if err != nil {
		t.Fatal(err)
	}
	if kind.price != "5" || balance.GetCreditsRemaining() != "49995" {
		t.Fatalf("credits remaining %s, want 49995 (50,000 less the summary's %s, counted once)", balance.GetCreditsRemaining(), kind.price)
	}
}
