// Console test runner for the C# binding: runs every test, prints "N passed, N failed".
// Usage: mono XdanTests.exe REPO_ROOT
using System;
using System.Collections.Generic;
using System.Globalization;
using System.IO;
using System.Linq;
using System.Reflection;
using System.Runtime.InteropServices;
using System.Text.RegularExpressions;
using Xdan;


internal sealed class TestFailure : Exception
{
    public TestFailure(string m) : base(m) { }
}

internal static class Tests
{
    static string root;
    static string ModelPath => Path.Combine(root, "tests/data/tiny-mixtral/Q8_0/tiny-mixtral-Q8_0.gguf");
    static string RefsPath => Path.Combine(root, "tests/data/tiny-mixtral/Q8_0/refs.json");

    // Logit tolerance against llama.cpp: the engine and llama.cpp each sit within ~0.045 of the
    // exact math on this model, so 0.1 between the two (tests/data/FIXTURES.md).
    const double Tol = 0.1;

    static void Check(bool cond, string what)
    {
        if (!cond) throw new TestFailure(what);
    }

    static T Throws<T>(Action a, string what) where T : Exception
    {
        try { a(); }
        catch (T e) { return e; }
        catch (Exception e) { throw new TestFailure($"{what}: want {typeof(T).Name}, got {e.GetType().Name}: {e.Message}"); }
        throw new TestFailure($"{what}: no exception");
    }

    static void ThrowsStatus(Action a, Status st, string what)
    {
        var e = Throws<XdanException>(a, what);
        Check(e.Status == st, $"{what}: want {st}, got {e.Status} ({e.Message})");
    }

    // --- the few numbers needed from refs.json (fixed layout; no JSON library in netstandard) ---
    class Refs
    {
        public int[] Prompt, Greedy, TopK0Ids;
        public double[] Margins, TopK0Logits;
    }

    static double[] ArrayAfter(string json, int from, string key, out int end)
    {
        int k = json.IndexOf("\"" + key + "\"", from, StringComparison.Ordinal);
        if (k < 0) throw new TestFailure("refs.json: no key " + key);
        int open = json.IndexOf('[', k), close = json.IndexOf(']', open);
        end = close;
        return json.Substring(open + 1, close - open - 1)
            .Split(new[] { ',' }, StringSplitOptions.RemoveEmptyEntries)
            .Select(s => double.Parse(s.Trim(), CultureInfo.InvariantCulture)).ToArray();
    }

    static Refs LoadRefs()
    {
        string j = File.ReadAllText(RefsPath);
        var r = new Refs();
        int p1 = j.IndexOf("\"name\": \"p1\"", StringComparison.Ordinal);
        int g = j.IndexOf("\"greedy\": {", StringComparison.Ordinal);
        Check(p1 >= 0 && g >= 0, "refs.json layout");
        r.Prompt = ArrayAfter(j, p1, "ids", out _).Select(v => (int)v).ToArray();
        r.Greedy = ArrayAfter(j, g, "ids", out _).Select(v => (int)v).ToArray();
        r.Margins = ArrayAfter(j, g, "top1_minus_top2", out _);
        int tk = j.IndexOf("\"topk_per_step\"", g, StringComparison.Ordinal);
        r.TopK0Ids = ArrayAfter(j, tk, "ids", out int end).Select(v => (int)v).ToArray();
        r.TopK0Logits = ArrayAfter(j, end, "logits", out _);
        Check(r.Prompt.Length == 7 && r.Greedy.Length == 24 && r.Margins.Length == 24 && r.TopK0Ids.Length == 8,
              "refs.json layout");
        return r;
    }

    static ContextParams SmallCtx(uint nSeq = 1) => new ContextParams { NCtx = 128, NSeqMax = nSeq };

    static int Argmax(float[] l)
    {
        int best = 0;
        for (int i = 1; i < l.Length; i++)
            if (l[i] > l[best]) best = i;
        return best;
    }

    // -----------------------------------------------------------------------------------------

    static void Version()
    {
        Check(Library.AbiVersion == 1, "ABI version");
        Check(Library.Version.Length > 0, "version string");
        Check(Library.StatusName(Status.Format) == "XDAN_E_FORMAT", "status name");
    }

    // The structs this binding declares have the C sizes (what *_params_init writes as size).
    static void StructLayoutsMatchTheLibrary()
    {
        IntPtr buf = Marshal.AllocHGlobal(1024);
        try
        {
            var checks = new[]
            {
                Tuple.Create<Action<IntPtr>, string, Type>(Xdan.Native.xdan_model_params_init, "xdan_model_params", typeof(Xdan.Native.ModelParams)),
                Tuple.Create<Action<IntPtr>, string, Type>(Xdan.Native.xdan_context_params_init, "xdan_context_params", typeof(Xdan.Native.ContextParams)),
                Tuple.Create<Action<IntPtr>, string, Type>(Xdan.Native.xdan_sampler_params_init, "xdan_sampler_params", typeof(Xdan.Native.SamplerParams)),
            };
            foreach (var c in checks)
            {
                for (int i = 0; i < 1024; i += 8) Marshal.WriteInt64(buf, i, 0);
                c.Item1(buf);
                int size = Marshal.ReadInt32(buf);
                int mine = Marshal.SizeOf(c.Item3);
                Check(size == mine, $"{c.Item2}: library size {size}, binding's {mine}");
            }
        }
        finally { Marshal.FreeHGlobal(buf); }
    }

    static void MissingFileThrowsFileNotFound()
    {
        var e = Throws<FileNotFoundException>(() => Model.Load("/nonexistent/dir/model.gguf"), "missing file");
        Check(e.Message.Contains("/nonexistent/dir/model.gguf"), "message names the file: " + e.Message);
        Check(e.InnerException is XdanException x && x.Status == Status.Io, "inner XdanException(Io)");
    }

    static void LoadInfoProgress()
    {
        var seen = new List<float>();
        using (var m = Model.Load(ModelPath, new ModelParams { Progress = f => { seen.Add(f); return true; } }))
        {
            Check(seen.Count > 0, "progress callback fired");
            for (int i = 1; i < seen.Count; i++) Check(seen[i] >= seen[i - 1], "progress monotonic");
            var info = m.Info;
            Check(info.Arch == "llama" && info.NVocab == 1024 && info.NLayer == 2 && info.NExpert == 8 &&
                  info.NExpertUsed == 2 && info.Bos == 1 && info.Eos == 2, "model info");
            Check(m.Meta("general.architecture") == "llama", "meta");
            ThrowsStatus(() => m.Meta("no.such.key"), Status.InvalidArg, "absent meta key");
        }
    }

    static void ProgressCancelAndException()
    {
        ThrowsStatus(() => Model.Load(ModelPath, new ModelParams { Progress = f => false }), Status.Cancelled, "cancel");
        var e = Throws<InvalidOperationException>(
            () => Model.Load(ModelPath, new ModelParams { Progress = f => throw new InvalidOperationException("boom") }),
            "callback exception");
        Check(e.Message == "boom", "the callback's own exception");
    }

    // Round trips use text without a BOS (llama.cpp keeps the SentencePiece space prefix when a
    // BOS is skipped) and words the 1024-token test vocabulary can spell.
    static void TokenizeRoundTrip()
    {
        using (var m = Model.Load(ModelPath))
        {
            string text = "Hello world";
            int[] plain = m.Tokenize(text, 0);
            int[] toks = m.Tokenize(text);
            Check(plain.Length > 0 && toks.Length == plain.Length + 1 && toks[0] == 1, "BOS first");
            Check(toks.Skip(1).SequenceEqual(plain), "same tokens after the BOS");
            Check(m.Detokenize(plain) == text, "round trip");
            string pieces = string.Concat(plain.Select(m.TokenPiece));
            Check(pieces.Contains("world"), "pieces: " + pieces);
            string longText = "abc def" + string.Concat(Enumerable.Repeat(" abc def", 200));
            int[] lt = m.Tokenize(longText, 0);
            Check(lt.Length > 200 && m.Detokenize(lt) == longText, "long round trip (buffer retry)");
            string uni = "h\u00e9llo w\u00f6rld";
            Check(m.Detokenize(m.Tokenize(uni, 0)) == uni, "non-ASCII round trip");
            Check(m.IsEog(2) && !m.IsEog(toks[toks.Length - 1]), "IsEog");
        }
    }

    static void GreedyMatchesFixture()
    {
        var r = LoadRefs();
        using (var m = Model.Load(ModelPath))
        using (var ctx = new Context(m, SmallCtx()))
        using (var s = new Sampler(m, SamplerParams.Greedy()))
        {
            ctx.Step(0, r.Prompt);
            Check(ctx.SeqLen(0) == r.Prompt.Length, "seq len after prompt");
            float[] l0 = ctx.Logits(0);
            Check(l0.Length == 1024, "n_vocab logits");
            for (int k = 0; k < r.TopK0Ids.Length; k++)
                Check(Math.Abs(l0[r.TopK0Ids[k]] - r.TopK0Logits[k]) < Tol, $"step 0 logit of {r.TopK0Ids[k]}");
            int matched = 0;
            for (int i = 0; i < r.Greedy.Length; i++)
            {
                float[] l = ctx.Logits(0);
                int t = s.Sample(ctx, 0);
                Check(t == Argmax(l), $"step {i}: greedy sample {t} is not the argmax {Argmax(l)}");
                if (t != r.Greedy[i])
                {
                    // Allowed only at a near-tie, in the reference and in our logits alike.
                    Check(r.Margins[i] < Tol && l[t] - l[r.Greedy[i]] < Tol,
                          $"step {i}: got {t}, want {r.Greedy[i]} (reference margin {r.Margins[i]})");
                    break;
                }
                matched++;
                ctx.Step(0, t);
            }
            Console.WriteLine($"  greedy: {matched}/{r.Greedy.Length} tokens equal to the reference");
        }
    }

    static void BatchForkKvStats()
    {
        var r = LoadRefs();
        using (var m = Model.Load(ModelPath))
        using (var ctx = new Context(m, SmallCtx(3)))
        {
            ctx.Step(0, r.Prompt);
            ctx.SeqFork(0, 1);
            var st = ctx.KvStats;
            Check(ctx.SeqLen(1) == r.Prompt.Length && st.SharedTokens >= (ulong)r.Prompt.Length, "fork shares the prompt");
            float[] single = ctx.Logits(0);
            ctx.StepBatch(new[] { new SeqTokens(1, new[] { r.Greedy[0] }), new SeqTokens(2, r.Prompt) });
            Check(ctx.SeqLen(1) == r.Prompt.Length + 1 && ctx.SeqLen(2) == r.Prompt.Length, "lengths after batch");
            float[] l2 = ctx.Logits(2);
            for (int i = 0; i < single.Length; i++)
                Check(Math.Abs(l2[i] - single[i]) < 1e-3, $"batched logit {i}");
            ctx.SeqClear(1);
            Check(ctx.SeqLen(1) == 0, "clear");
            ThrowsStatus(() => ctx.Logits(1), Status.InvalidArg, "logits of an empty sequence");
            ThrowsStatus(() => ctx.SeqFork(0, 99), Status.InvalidArg, "fork to a slot out of range");
        }
    }

    static void AbortCallback()
    {
        var r = LoadRefs();
        int calls = 0;
        using (var m = Model.Load(ModelPath))
        using (var ctx = new Context(m, new ContextParams { NCtx = 128, NSeqMax = 1, AbortCheck = () => { calls++; return false; } }))
        {
            ThrowsStatus(() => ctx.Step(0, r.Prompt), Status.Cancelled, "aborted step");
            Check(calls > 0 && ctx.SeqLen(0) == 0, "abort polled, sequence unchanged");
        }
    }

    [DllImport("xdan")] static extern Status xdan_debug_panic_next_step(IntPtr c);

    // End to end: a panic inside the engine (the library's test hook) is caught at the ABI and
    // logged as an error, which must reach the managed sink; the step throws XdanException
    // (Internal). Once the sink is removed, the trampoline delivers nothing.
    static void LogCallback()
    {
        var got = new List<KeyValuePair<LogLevel, string>>();
        Library.SetLogCallback((level, text) => { lock (got) got.Add(new KeyValuePair<LogLevel, string>(level, text)); });
        using (var m = Model.Load(ModelPath))
        using (var ctx = new Context(m, SmallCtx()))
        {
            Check(xdan_debug_panic_next_step(ctx.Handle.DangerousGetHandle()) == Status.Ok, "arm the panic hook");
            ThrowsStatus(() => ctx.Step(0, 1), Status.Internal, "step that panics inside the engine");
        }
        Library.SetLogCallback(null);
        lock (got)
        {
            foreach (var g in got)
                Check(g.Key >= LogLevel.Error && g.Key <= LogLevel.Debug && g.Value.Length > 0, "well-formed log line");
            Check(got.Any(g => g.Key == LogLevel.Error && g.Value.Contains("panic")), "the caught panic reached the sink");
            int n = got.Count;
            IntPtr msg = Marshal.StringToHGlobalAnsi("dropped");
            try { Library.LogTrampoline((int)LogLevel.Warn, msg, IntPtr.Zero); }
            finally { Marshal.FreeHGlobal(msg); }
            Check(got.Count == n, "a removed sink gets nothing");
        }
    }

    static void DisposedObjectsFailCleanly()
    {
        var m = Model.Load(ModelPath);
        var ctx = new Context(m, SmallCtx());
        var s = new Sampler(m, SamplerParams.Greedy());
        m.Dispose();
        m.Dispose();
        Throws<ObjectDisposedException>(() => m.Tokenize("x"), "tokenize on disposed model");
        Throws<ObjectDisposedException>(() => new Context(m), "context on disposed model");
        // The context keeps the native model alive.
        Check(ctx.KvStats.UsedTokens == 0, "context after model dispose");
        ctx.Dispose();
        Throws<ObjectDisposedException>(() => ctx.Step(0, 1), "step on disposed context");
        Throws<ObjectDisposedException>(() => s.Sample(ctx, 0), "sample with disposed context");
        s.Dispose();
        Throws<ObjectDisposedException>(() => s.Accept(1), "accept on disposed sampler");
    }

    static void SafeHandlesReleased()
    {
        long m0 = NativeHandles.ModelsReleased, c0 = NativeHandles.ContextsReleased, s0 = NativeHandles.SamplersReleased;
        // Disposed explicitly...
        for (int i = 0; i < 5; i++)
        {
            var m = Model.Load(ModelPath);
            new Context(m, SmallCtx()).Dispose();
            new Sampler(m).Dispose();
            m.Dispose();
        }
        Check(NativeHandles.ModelsReleased - m0 == 5 && NativeHandles.ContextsReleased - c0 == 5 &&
              NativeHandles.SamplersReleased - s0 == 5, "Dispose released every handle");
        // ...and forgotten: the finalizers release them.
        MakeGarbage(5);
        for (int i = 0; i < 10 && NativeHandles.Live > 0; i++)
        {
            GC.Collect();
            GC.WaitForPendingFinalizers();
        }
        Check(NativeHandles.ModelsReleased - m0 == 10 && NativeHandles.ContextsReleased - c0 == 10 &&
              NativeHandles.SamplersReleased - s0 == 10,
              $"finalizers released: models {NativeHandles.ModelsReleased - m0}, contexts " +
              $"{NativeHandles.ContextsReleased - c0}, samplers {NativeHandles.SamplersReleased - s0} (want 10 each)");
        Check(NativeHandles.Live == 0, "no native object left alive");
    }

    // In its own method so that no local keeps the objects reachable.
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.NoInlining)]
    static void MakeGarbage(int n)
    {
        for (int i = 0; i < n; i++)
        {
            var m = Model.Load(ModelPath);
            new Context(m, SmallCtx());
            new Sampler(m);
        }
    }

    static void SamplerSeeded()
    {
        var r = LoadRefs();
        using (var m = Model.Load(ModelPath))
        {
            Func<int[]> run = () =>
            {
                using (var ctx = new Context(m, SmallCtx()))
                using (var s = new Sampler(m, new SamplerParams { Temperature = 1, Seed = 42 }))
                {
                    s.Accept(r.Prompt);
                    ctx.Step(0, r.Prompt);
                    var out_ = new int[8];
                    for (int i = 0; i < 8; i++)
                    {
                        out_[i] = s.Sample(ctx, 0);
                        ctx.Step(0, out_[i]);
                    }
                    return out_;
                }
            };
            Check(run().SequenceEqual(run()), "same seed, same tokens");
        }
    }

    static int Main(string[] args)
    {
        if (args.Length != 1)
        {
            Console.Error.WriteLine("usage: XdanTests.exe REPO_ROOT");
            return 2;
        }
        root = args[0];
        var tests = new List<KeyValuePair<string, Action>>();
        Action<string, Action> add = (n, f) => tests.Add(new KeyValuePair<string, Action>(n, f));
        add("Version", Version);
        add("StructLayoutsMatchTheLibrary", StructLayoutsMatchTheLibrary);
        add("MissingFileThrowsFileNotFound", MissingFileThrowsFileNotFound);
        add("LoadInfoProgress", LoadInfoProgress);
        add("ProgressCancelAndException", ProgressCancelAndException);
        add("TokenizeRoundTrip", TokenizeRoundTrip);
        add("GreedyMatchesFixture", GreedyMatchesFixture);
        add("BatchForkKvStats", BatchForkKvStats);
        add("AbortCallback", AbortCallback);
        add("LogCallback", LogCallback);
        add("DisposedObjectsFailCleanly", DisposedObjectsFailCleanly);
        add("SamplerSeeded", SamplerSeeded);
        add("SafeHandlesReleased", SafeHandlesReleased);
        int passed = 0, failed = 0;
        foreach (var kv in tests)
        {
            string name = kv.Key;
            Action fn = kv.Value;
            try
            {
                fn();
                passed++;
                Console.WriteLine("ok   " + name);
            }
            catch (Exception e)
            {
                failed++;
                Console.WriteLine($"FAIL {name}: {(e is TestFailure ? e.Message : e.ToString())}");
            }
        }
        Console.WriteLine($"{passed} passed, {failed} failed");
        return failed == 0 ? 0 : 1;
    }
}
