// A reply larger than gRPC's 4 MiB default but within the server's --message-mb-max (16 MiB): the
// client reads it, as the Python client (64 MiB) and the TypeScript client do.

package tariff_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	tariff "github.com/tariff/tariff/clients/go"
	tariffv1 "github.com/tariff/tariff/clients/go/gen/tariff/v1"
)

func TestAReplyOverFourMiBIsRead(t *testing.T) {
	srv := startServer(t)
	client := newClient(t, srv.target(), tariff.Options{})
	ctx := context.Background()
	// A draft of 10,000 rates (the most a version holds), each matching two 256-byte dimension values: about
	// 5.5 MB, which CreateDraftVersion and GetVersion answer whole (paged lists keep a page within 4 MiB).
	product := &tariffv1.Product{
		Id: "wide", EventType: "wide", Aggregation: tariffv1.Aggregation_SUM, ValueKey: "n", PricingDimensions: []string{"a", "b"},
	}
	if _, err := client.Pricing.CreateProduct(ctx, &tariffv1.CreateProductRequest{Product: product}); err != nil {
		t.Fatal(err)
	}
	if _, err := client.Pricing.CreateRateCard(ctx, &tariffv1.CreateRateCardRequest{Id: "wide-card", Name: "wide", PricingUnit: "credits"}); err != nil {
		t.Fatal(err)
	}
	rates := make([]*tariffv1.Rate, 0, 10_000)
	for i := range 10_000 {
		match := map[string]string{"a": fmt.Sprintf("%05d", i) + strings.Repeat("a", 251), "b": strings.Repeat("b", 256)}
		rates = append(rates, &tariffv1.Rate{ProductId: "wide", Match: match, Price: &tariffv1.Rate_Unit{Unit: &tariffv1.UnitPrice{Price: "1"}}})
	}
	draft, err := client.Pricing.CreateDraftVersion(ctx, &tariffv1.CreateDraftVersionRequest{RateCardId: "wide-card", UpsertRates: rates})
	if err != nil {
		t.Fatalf("CreateDraftVersion: %v (an answer the server sends, within its 16 MiB message limit)", err)
	}
	version, err := client.Pricing.GetVersion(ctx, &tariffv1.GetVersionRequest{
		RateCardId: "wide-card", Selector: &tariffv1.GetVersionRequest_Version{Version: draft.GetVersion()},
	})
	if err != nil {
		t.Fatalf("GetVersion: %v", err)
	}
	if size := proto.Size(version); len(version.GetRates()) != 10_000 || size <= 4<<20 {
		t.Fatalf("%d rates in %d bytes: want the 10,000 wide ones in over 4 MiB", len(version.GetRates()), size)
	}
}
