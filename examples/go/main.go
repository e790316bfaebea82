// Generates text from a prompt with the Go binding.
//
//	cd examples/go && go run . -m ../../tests/data/tiny-mixtral/Q8_0/tiny-mixtral-Q8_0.gguf -p "Once upon a time"
package main

import (
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"

	"xdan"
)

func main() {
	modelPath := flag.String("m", "", "GGUF model file")
	prompt := flag.String("p", "Once upon a time", "prompt")
	n := flag.Int("n", 32, "tokens to generate at most")
	temp := flag.Float64("t", 0.8, "temperature (0 = greedy)")
	seed := flag.Uint64("s", 1, "sampling seed")
	flag.Parse()
	if *modelPath == "" {
		fmt.Fprintln(os.Stderr, "usage: generate -m MODEL.gguf [-p PROMPT] [-n N] [-t TEMP] [-s SEED]")
		os.Exit(2)
	}
	if err := generate(*modelPath, *prompt, *n, float32(*temp), *seed); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			fmt.Fprintln(os.Stderr, "no such model file:", *modelPath)
		}
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func generate(path, prompt string, n int, temp float32, seed uint64) error {
	model, err := xdan.LoadModel(path, nil)
	if err != nil {
		return err
	}
	defer model.Close()

	cp := xdan.DefaultContextParams()
	cp.NCtx = 1024
	ctx, err := xdan.NewContext(model, &cp)
	if err != nil {
		return err
	}
	defer ctx.Close()

	sp := xdan.DefaultSamplerParams()
	sp.Temperature = temp
	sp.Seed = seed
	sampler, err := xdan.NewSampler(model, &sp)
	if err != nil {
		return err
	}
	defer sampler.Close()

	tokens, err := model.Tokenize(prompt, xdan.TokenizeAddSpecial)
	if err != nil {
		return err
	}
	if err := sampler.Accept(tokens); err != nil {
		return err
	}
	if err := ctx.Step(0, tokens); err != nil {
		return err
	}
	fmt.Print(prompt)
	for i := 0; i < n; i++ {
		t, err := sampler.Sample(ctx, 0)
		if err != nil {
			return err
		}
		if model.IsEOG(t) {
			break
		}
		piece, err := model.TokenPiece(t)
		if err != nil {
			return err
		}
		fmt.Print(piece)
		if err := ctx.Step(0, []xdan.Token{t}); err != nil {
			return err
		}
	}
	fmt.Println()
	return nil
}
