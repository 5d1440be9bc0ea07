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

	decision, err := client.Authorize(ctx, &tariffv1.AuthorizeRequest{CustomerId: "acme", EventType: "ai_action", Dimensions: gpt4ComplexSummary},
		tariff.AuthorizeOptions{Timeout: time.Second, OnUnavailable: tariff.FailClosed}) // the gateway's check
	if err != nil {
		log.Fatal(err)
	}
	if decision.Allowed { // estimated cost "5", reason "OK"
		sender, err := client.NewUsageSender(tariff.SenderOptions{BatchEventsMax: 500}) // batches, streams, resends unacked batches
		if err != nil {
			log.Fatal(err)
		}
		event := &tariffv1.UsageEvent{TransactionId: "txn-1", CustomerId: "acme", EventType: "ai_action", TimestampMs: time.Now().UnixMilli(), Dimensions: gpt4ComplexSummary}
		if err := sender.Send(ctx, event); err != nil {
			log.Fatal(err)
		}
		if _, err := sender.Close(ctx); err != nil { // waits for every ack: each event durable, a duplicate, or rejected (see OnAck)
			log.Fatal(err)
		}
	}
	balance, err := client.GetBalance(ctx, "acme")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(decision.EstimatedCost, balance.GetCreditsRemaining()) // 5 49995
}
