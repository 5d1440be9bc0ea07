// The README's Go example is example/main.go, character for character, and it runs: built and
// started against a fresh demo server, it prints the estimated cost and the balance it shows.

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

func TestExampleRuns(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Fatal(err)
	}
	binary := filepath.Join(t.TempDir(), "example")
	if output, err := exec.Command(goTool, "build", "-o", binary, "./example").CombinedOutput(); err != nil {
		t.Fatalf("go build ./example: %v\n%s", err, output)
	}
	srv := startServer(t)
	cmd := exec.Command(binary)
	cmd.Env = append(os.Environ(), "TARIFF_TARGET="+srv.target(), "TARIFF_API_KEY=")
	output, err := cmd.Output()
	if err != nil {
		t.Fatalf("example: %v\n%s", err, output)
	}
	if string(output) != "5 49995\n" {
		t.Fatalf("example printed %q, want %q", output, "5 49995\n")
	}
}
