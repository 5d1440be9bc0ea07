// gen/ is generated (`make clients` / `make go-generate`) and committed: this test generates again
// into a temporary directory with the same buf.gen.yaml and the same pinned plugins, and fails when
// anything differs, so a .proto change without regenerating cannot go unnoticed.

package tariff_test

import (
	"bytes"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
)

func filesBelow(t *testing.T, root string) map[string][]byte {
	t.Helper()
	files := map[string][]byte{}
	err := filepath.WalkDir(root, func(path string, entry fs.DirEntry, err error) error {
		if err != nil || entry.IsDir() {
			return err
		}
		text, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, path)
		files[rel] = text
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

func TestGeneratedCodeIsFresh(t *testing.T) {
	buf := os.Getenv("BUF")
	if buf == "" {
		buf = filepath.Join("..", "typescript", "node_modules", ".bin", "buf")
	}
	if _, err := os.Stat(buf); err != nil {
		t.Skipf("buf not found at %s (it comes with `make ts-install`): gen/ not checked", buf)
	}
	for _, plugin := range []string{"bin/protoc-gen-go", "bin/protoc-gen-go-grpc"} {
		if _, err := os.Stat(plugin); err != nil {
			t.Fatalf("%s missing: run `make go-install`", plugin)
		}
	}
	out := t.TempDir()
	cmd := exec.Command(buf, "generate", "--output", out)
	if output, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("buf generate: %v\n%s", err, output)
	}
	committed, fresh := filesBelow(t, "gen"), filesBelow(t, filepath.Join(out, "gen"))
	if len(fresh) == 0 {
		t.Fatal("buf generate wrote nothing")
	}
	names := func(files map[string][]byte) []string {
		keys := make([]string, 0, len(files))
		for name := range files {
			keys = append(keys, name)
		}
		slices.Sort(keys)
		return keys
	}
	if !slices.Equal(names(committed), names(fresh)) {
		t.Fatalf("gen/ holds %v, buf generates %v: run `make clients`", names(committed), names(fresh))
	}
	for name, text := range fresh {
		if !bytes.Equal(committed[name], text) {
			t.Errorf("gen/%s is stale: run `make clients`", name)
		}
	}
}
