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
	// 160 customers with 64 attributes of 256-byte keys and values each (the most the server takes): about
	// 33 KB a customer, so one page of them is over 5 MB.
	for i := range 160 {
		attributes := make(map[string]string, 64)
		for j := range 64 {
			attributes[fmt.Sprintf("%02d", j)+strings.Repeat("k", 254)] = strings.Repeat("v", 256)
		}
		if _, err := client.Contracts.CreateCustomer(ctx, &tariffv1.CreateCustomerRequest{Id: fmt.Sprintf("wide-%03d", i), Attributes: attributes}); err != nil {
			t.Fatal(err)
		}
	}
	page, err := client.Contracts.ListCustomers(ctx, &tariffv1.ListCustomersRequest{PageSize: 1000})
	if err != nil {
		t.Fatalf("ListCustomers: %v (a page the server sends, within its 16 MiB message limit)", err)
	}
	if size := proto.Size(page); len(page.GetCustomers()) < 160 || size <= 4<<20 {
		t.Fatalf("%d customers in %d bytes: want the 160 wide ones in over 4 MiB", len(page.GetCustomers()), size)
	}
}
