// The README's Go example: check credit, stream one usage event, read the balance.
package main

import (
	"cmp"
	"context"
	"fmt"
	"log"
	"os"
	"time"

	tariff "github.com/tariff/tariff/clients/go"
	tariffv1 "github.com/tariff/tariff/clients/go/gen/tariff/v1"
)

func main() {
	ctx := context.Background()
	target := cmp.Or(os.Getenv("TARIFF_TARGET"), "127.0.0.1:50051")
	client, err := tariff.New(target, tariff.Options{APIKey: os.Getenv("TARIFF_API_KEY")})
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()
	gpt4ComplexSummary := map[string]string{"action": "summary", "data_source": "crm", "model": "gpt-4", "complexity": "complex"}
	// One example summary a day: the transaction id and the timestamp both come from today's date, so a second run
	// today resends the very same event, which the server counts once (the id is the idempotency key).
	today := time.Now().UTC().Truncate(24 * time.Hour)
	transactionID := "example-go-" + today.Format(time.DateOnly)

	decision, err := client.Authorize(ctx, &tariffv1.AuthorizeRequest{CustomerId: "acme", EventType: "ai_action", Dimensions: gpt4ComplexSummary},
		tariff.AuthorizeOptions{Timeout: time.Second, OnUnavailable: tariff.FailClosed}) // the gateway's check
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("authorize:", decision.Reason, "estimated cost", decision.EstimatedCost) // OK 5
	if decision.Allowed {
		// Batches, streams, resends unacknowledged batches; OnAck sees every ack, rejections included.
		sender, err := client.NewUsageSender(tariff.SenderOptions{BatchEventsMax: 500, OnAck: func(ack *tariffv1.IngestAck, _ *tariffv1.UsageBatch) {
			for _, rejection := range ack.GetRejected() {
				fmt.Println(rejection.GetTransactionId(), "rejected:", rejection.GetMessage())
			}
		}})
		if err != nil {
			log.Fatal(err)
		}
		event := &tariffv1.UsageEvent{TransactionId: transactionID, CustomerId: "acme", EventType: "ai_action", TimestampMs: today.UnixMilli(), Dimensions: gpt4ComplexSummary}
		if err := sender.Send(ctx, event); err != nil {
			log.Fatal(err)
		}
		stats, err := sender.Close(ctx) // waits for every ack: each event is durable, a duplicate, or rejected
		if err != nil {
			log.Fatal(err)
		}
		if stats.EventsDuplicate > 0 {
			fmt.Println(transactionID, "already recorded: counted once, nothing charged again")
		} else if stats.EventsAccepted > 0 {
			fmt.Println(transactionID, "recorded")
		}
	}
	balance, err := client.GetBalance(ctx, "acme")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("credits remaining:", balance.GetCreditsRemaining()) // 49995 on a fresh demo, and after a rerun too
}
