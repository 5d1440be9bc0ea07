// The README's Go example is example/main.go, character for character, and it runs: built and
// started against a fresh demo server, it prints the decision, that its event was recorded and the
// balance; run again, that its event was already recorded, and the same balance.

package tariff_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// readmeBlock returns the README's fenced block that follows the comment naming file.
func readmeBlock(t *testing.T, file, language string) string {
	t.Helper()
	readme, err := os.ReadFile(filepath.Join(repoRoot(t), "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	opening := "\n<!-- " + file + " -->\n```" + language + "\n"
	parts := strings.Split(string(readme), opening)
	if len(parts) != 2 {
		t.Fatalf("README.md has %d blocks opened by %q, want 1", len(parts)-1, opening)
	}
	block, _, found := strings.Cut(parts[1], "\n```\n")
	if !found {
		t.Fatalf("README.md: the block after %q is not closed", opening)
	}
	return block + "\n"
}

func TestREADMEGoExampleIsExampleMain(t *testing.T) {
	example, err := os.ReadFile(filepath.Join("example", "main.go"))
	if err != nil {
		t.Fatal(err)
	}
	if block := readmeBlock(t, "clients/go/example/main.go", "go"); block != string(example) {
		t.Fatalf("README.md's Go example differs from clients/go/example/main.go; copy the file into README.md:\n%s", example)
	}
}

func TestExampleRunsAndARerunIsAlreadyRecorded(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Fatal(err)
	}
	binary := filepath.Join(t.TempDir(), "example")
	if output, err := exec.Command(goTool, "build", "-o", binary, "./example").CombinedOutput(); err != nil {
		t.Fatalf("go build ./example: %v\n%s", err, output)
	}
	srv := startServer(t)
	// The second run resends the very same event (its id is the day's): the server counts it once and the example
	// says so.
	var transactionIDs []string
	for run, outcome := range []string{"recorded", "already recorded: counted once, nothing charged again"} {
		cmd := exec.Command(binary)
		cmd.Env = append(os.Environ(), "TARIFF_TARGET="+srv.target(), "TARIFF_API_KEY=")
		output, err := cmd.Output()
		if err != nil {
			t.Fatalf("example run %d: %v\n%s", run+1, err, output)
		}
		lines := strings.Split(string(output), "\n")
		transactionID, said, _ := strings.Cut(lines[min(1, len(lines)-1)], " ")
		if len(lines) != 4 || lines[0] != "authorize: OK estimated cost 5" || said != outcome ||
			!strings.HasPrefix(transactionID, "example-go-") || lines[2] != "credits remaining: 49995" {
			t.Fatalf("example run %d printed %q, want the decision, the event %s and the balance 49995", run+1, output, outcome)
		}
		transactionIDs = append(transactionIDs, transactionID)
	}
	if transactionIDs[0] != transactionIDs[1] {
		t.Fatalf("the two runs sent %v: a rerun must resend the same event", transactionIDs)
	}
}
