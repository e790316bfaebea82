// The public C# API: Model, Context, Sampler (IDisposable over SafeHandles), XdanException.
using System;
using System.Collections.Generic;
using System.IO;
using System.Runtime.InteropServices;
using System.Text;

namespace Xdan
{
    /// <summary>A failed library call: the status and the library's detail message.</summary>
    public class XdanException : Exception
    {
        public Status Status { get; }
        public string Operation { get; }

        public XdanException(Status status, string operation, string message)
            : base(message)
        {
            Status = status;
            Operation = operation;
        }

        public override string ToString() => $"{Operation}: {Status}: {Message}";
    }

    /// <summary>Library-wide functions.</summary>
    public static class Library
    {
        public static uint AbiVersion => Native.xdan_abi_version();
        public static string Version => Native.Utf8(Native.xdan_version());
        public static bool CudaAvailable => Native.xdan_cuda_available();
        public static string StatusName(Status s) => Native.Utf8(Native.xdan_status_name(s));

        // The delegate lives in a static field for the life of the process: the library keeps the
        // function pointer, and may call it from any thread.
        private static readonly Native.LogFn logThunk = LogTrampoline;
        private static volatile Action<LogLevel, string> logSink;

        /// <summary>
        /// Sends the library's log lines to <paramref name="sink"/> (called from any thread; keep it
        /// short); null restores the default (stderr, warnings and errors). Exceptions it throws are
        /// dropped: there is no caller to give them to.
        /// </summary>
        public static void SetLogCallback(Action<LogLevel, string> sink)
        {
            logSink = sink;
            if (sink == null)
                Native.xdan_set_log_callback(IntPtr.Zero, IntPtr.Zero);
            else
                Native.xdan_set_log_callback(Marshal.GetFunctionPointerForDelegate(logThunk), IntPtr.Zero);
        }

        [MonoPInvokeCallback(typeof(Native.LogFn))]
        internal static void LogTrampoline(int level, IntPtr message, IntPtr user)
        {
            var sink = logSink;
            if (sink == null) return;
            try { sink((LogLevel)level, Native.Utf8(message)); }
            catch (Exception) { }
        }

        // xdan_last_error is per OS thread; a managed thread stays on its OS thread between the
        // failing call and this read.
        internal static void Check(Status s, string op)
        {
            if (s != Status.Ok) throw Error(s, op);
        }

        internal static XdanException Error(Status s, string op)
        {
            string msg = Native.Utf8(Native.xdan_last_error());
            return new XdanException(s, op, msg.Length > 0 ? msg : StatusName(s));
        }

        /// <summary>The "buffer too small: retry with *len" protocol for string outputs.</summary>
        internal delegate Status StringCall(byte[] buf, UIntPtr cap, out UIntPtr len);

        internal static string StringOut(string op, StringCall call)
        {
            var buf = new byte[256];
            Status s = call(buf, (UIntPtr)buf.Length, out UIntPtr len);
            if (s == Status.BufferTooSmall)
            {
                buf = new byte[(int)len + 1];
                s = call(buf, (UIntPtr)buf.Length, out len);
            }
            Check(s, op);
            return Encoding.UTF8.GetString(buf, 0, (int)len);
        }
    }

    /// <summary>Carries a managed callback through native code; an exception it throws is kept
    /// and rethrown on the calling thread after the native call returns.</summary>
    internal sealed class CallbackState
    {
        internal Func<float, bool> Progress;
        internal Func<bool> Abort;
        internal Exception Error;

        internal static readonly Native.ProgressFn ProgressThunk = ProgressTrampoline;
        internal static readonly Native.ProgressFn AbortThunk = AbortTrampoline;

        [MonoPInvokeCallback(typeof(Native.ProgressFn))]
        private static bool ProgressTrampoline(float fraction, IntPtr user)
        {
            var st = (CallbackState)GCHandle.FromIntPtr(user).Target;
            if (st.Error != null) return false;
            try { return st.Progress(fraction); }
            catch (Exception e) { st.Error = e; return false; }
        }

        [MonoPInvokeCallback(typeof(Native.ProgressFn))]
        private static bool AbortTrampoline(float fraction, IntPtr user)
        {
            var st = (CallbackState)GCHandle.FromIntPtr(user).Target;
            if (st.Error != null) return false;
            try { return st.Abort(); }
            catch (Exception e) { st.Error = e; return false; }
        }

        internal void RethrowIfAny()
        {
            var e = Error;
            if (e == null) return;
            Error = null;
            System.Runtime.ExceptionServices.ExceptionDispatchInfo.Capture(e).Throw();
        }
    }

    public sealed class ModelParams
    {
        public Device Device;
        public int CudaDevice;
        public ulong VramBudget;
        public int Threads;
        public bool UseMmap;
        public bool VocabOnly;
        /// <summary>Called during the load with the fraction done; return false to cancel.</summary>
        public Func<float, bool> Progress;

        /// <summary>The library's defaults.</summary>
        public ModelParams()
        {
            var p = Native.InitParams<Native.ModelParams>(Native.xdan_model_params_init);
            Device = (Device)p.device;
            CudaDevice = p.cuda_device;
            VramBudget = p.vram_budget;
            Threads = p.n_threads;
            UseMmap = p.use_mmap != 0;
            VocabOnly = p.vocab_only != 0;
        }
    }

    public struct ModelInfo
    {
        public string Arch;
        public uint NVocab, NCtxTrain, NEmbd, NLayer, NHead, NHeadKv, NFf, NExpert, NExpertUsed;
        public ulong NParams, FileBytes;
        public int Bos, Eos;
    }

    public struct ChatMessage
    {
        public string Role, Content;
        public ChatMessage(string role, string content) { Role = role; Content = content; }
    }

    /// <summary>Tokenizer flags.</summary>
    public static class Tokenize
    {
        public const uint AddSpecial = 1;
        public const uint ParseSpecial = 2;
        public const uint SkipSpecial = 1; // for Detokenize
    }

    /// <summary>A loaded GGUF model; immutable, usable from many threads.</summary>
    public sealed class Model : IDisposable
    {
        internal readonly ModelHandle Handle;

        private Model(ModelHandle h) { Handle = h; }

        /// <summary>Loads a GGUF file. A missing file throws FileNotFoundException with the
        /// library's message (its InnerException is the XdanException); other failures throw
        /// XdanException.</summary>
        public static Model Load(string path, ModelParams parameters = null)
        {
            if (path == null) throw new ArgumentNullException(nameof(path));
            parameters = parameters ?? new ModelParams();
            var p = Native.InitParams<Native.ModelParams>(Native.xdan_model_params_init);
            p.size = (uint)Marshal.SizeOf(typeof(Native.ModelParams));
            p.device = (int)parameters.Device;
            p.cuda_device = parameters.CudaDevice;
            p.vram_budget = parameters.VramBudget;
            p.n_threads = parameters.Threads;
            p.use_mmap = (byte)(parameters.UseMmap ? 1 : 0);
            p.vocab_only = (byte)(parameters.VocabOnly ? 1 : 0);
            CallbackState state = null;
            GCHandle gch = default(GCHandle);
            if (parameters.Progress != null)
            {
                state = new CallbackState { Progress = parameters.Progress };
                gch = GCHandle.Alloc(state);
                p.progress = Marshal.GetFunctionPointerForDelegate(CallbackState.ProgressThunk);
                p.progress_user = GCHandle.ToIntPtr(gch);
            }
            ModelHandle h;
            Status s;
            try
            {
                s = Native.xdan_model_load(Native.Utf8Z(path), ref p, out h);
            }
            finally
            {
                if (gch.IsAllocated) gch.Free();
            }
            if (s == Status.Ok) System.Threading.Interlocked.Increment(ref NativeHandles.modelsCreated);
            if (state != null && state.Error != null)
            {
                h.Dispose();
                state.RethrowIfAny();
            }
            if (s != Status.Ok)
            {
                var e = Library.Error(s, "xdan_model_load");
                h.Dispose();
                if (s == Status.Io && !File.Exists(path))
                    throw new FileNotFoundException(e.Message, path, e);
                throw e;
            }
            return new Model(h);
        }

        public void Dispose() => Handle.Dispose();

        internal ModelHandle Live
        {
            get
            {
                if (Handle.IsClosed) throw new ObjectDisposedException(nameof(Model));
                return Handle;
            }
        }

        public ModelInfo Info
        {
            get
            {
                var ni = new Native.ModelInfo
                {
                    size = (uint)Marshal.SizeOf(typeof(Native.ModelInfo)),
                    arch = new byte[32],
                };
                Library.Check(Native.xdan_model_info_get(Live, ref ni), "xdan_model_info_get");
                int n = Array.IndexOf(ni.arch, (byte)0);
                return new ModelInfo
                {
                    Arch = Encoding.UTF8.GetString(ni.arch, 0, n < 0 ? ni.arch.Length : n),
                    NVocab = ni.n_vocab, NCtxTrain = ni.n_ctx_train, NEmbd = ni.n_embd, NLayer = ni.n_layer,
                    NHead = ni.n_head, NHeadKv = ni.n_head_kv, NFf = ni.n_ff,
                    NExpert = ni.n_expert, NExpertUsed = ni.n_expert_used,
                    NParams = ni.n_params, FileBytes = ni.file_bytes, Bos = ni.bos, Eos = ni.eos,
                };
            }
        }

        /// <summary>A GGUF metadata value as text (XdanException InvalidArg if absent).</summary>
        public string Meta(string key)
        {
            var h = Live;
            byte[] k = Native.Utf8Z(key);
            return Library.StringOut("xdan_model_meta",
                (byte[] buf, UIntPtr cap, out UIntPtr len) => Native.xdan_model_meta(h, k, buf, cap, out len));
        }

        public int[] Tokenize(string text, uint flags = Xdan.Tokenize.AddSpecial)
        {
            var h = Live;
            byte[] utf8 = Encoding.UTF8.GetBytes(text);
            var toks = new int[utf8.Length + 4];
            Status s = Native.xdan_tokenize(h, utf8, (UIntPtr)utf8.Length, flags, toks, (UIntPtr)toks.Length, out UIntPtr n);
            if (s == Status.BufferTooSmall)
            {
                toks = new int[(int)n];
                s = Native.xdan_tokenize(h, utf8, (UIntPtr)utf8.Length, flags, toks, (UIntPtr)toks.Length, out n);
            }
            Library.Check(s, "xdan_tokenize");
            Array.Resize(ref toks, (int)n);
            return toks;
        }

        public string Detokenize(int[] tokens, uint flags = 0)
        {
            var h = Live;
            var t = tokens.Length > 0 ? tokens : new int[1];
            return Library.StringOut("xdan_detokenize",
                (byte[] buf, UIntPtr cap, out UIntPtr len) =>
                    Native.xdan_detokenize(h, t, (UIntPtr)tokens.Length, flags, buf, cap, out len));
        }

        public string TokenPiece(int token)
        {
            var h = Live;
            return Library.StringOut("xdan_token_piece",
                (byte[] buf, UIntPtr cap, out UIntPtr len) => Native.xdan_token_piece(h, token, buf, cap, out len));
        }

        public bool IsEog(int token) => Native.xdan_token_is_eog(Live, token);

        /// <summary>Renders the model's chat template.</summary>
        public string ChatApply(IList<ChatMessage> messages, bool addAssistantPrompt = true)
        {
            var h = Live;
            var raw = new Native.ChatMessage[Math.Max(1, messages.Count)];
            try
            {
                for (int i = 0; i < messages.Count; i++)
                {
                    raw[i].role = Native.Utf8ZAlloc(messages[i].Role);
                    raw[i].content = Native.Utf8ZAlloc(messages[i].Content);
                }
                return Library.StringOut("xdan_chat_apply",
                    (byte[] buf, UIntPtr cap, out UIntPtr len) =>
                        Native.xdan_chat_apply(h, raw, (UIntPtr)messages.Count, addAssistantPrompt, buf, cap, out len));
            }
            finally
            {
                foreach (var m in raw)
                {
                    if (m.role != IntPtr.Zero) Marshal.FreeHGlobal(m.role);
                    if (m.content != IntPtr.Zero) Marshal.FreeHGlobal(m.content);
                }
            }
        }
    }

    public sealed class ContextParams
    {
        public uint NCtx, NSeqMax, NKvTokens, NBatch;
        public KvType KvType;
        public int Threads;
        /// <summary>Polled during Step; return false to cancel it (XdanException Cancelled).</summary>
        public Func<bool> AbortCheck;

        public ContextParams()
        {
            var p = Native.InitParams<Native.ContextParams>(Native.xdan_context_params_init);
            NCtx = p.n_ctx; NSeqMax = p.n_seq_max; NKvTokens = p.n_kv_tokens; NBatch = p.n_batch;
            KvType = (KvType)p.kv_type; Threads = p.n_threads;
        }
    }

    public struct KvStats
    {
        public ulong CapacityTokens, UsedTokens, SharedTokens, Bytes;
    }

    public struct SeqTokens
    {
        public uint Seq;
        public int[] Tokens;
        public SeqTokens(uint seq, int[] tokens) { Seq = seq; Tokens = tokens; }
    }

    /// <summary>KV cache and compute state for one or more sequences; one thread at a time.</summary>
    public sealed class Context : IDisposable
    {
        internal readonly ContextHandle Handle;
        private readonly CallbackState abort;

        public Context(Model model, ContextParams parameters = null)
        {
            parameters = parameters ?? new ContextParams();
            var p = Native.InitParams<Native.ContextParams>(Native.xdan_context_params_init);
            p.size = (uint)Marshal.SizeOf(typeof(Native.ContextParams));
            p.n_ctx = parameters.NCtx;
            p.n_seq_max = parameters.NSeqMax;
            p.n_kv_tokens = parameters.NKvTokens;
            p.n_batch = parameters.NBatch;
            p.kv_type = (int)parameters.KvType;
            p.n_threads = parameters.Threads;
            IntPtr state = IntPtr.Zero;
            if (parameters.AbortCheck != null)
            {
                abort = new CallbackState { Abort = parameters.AbortCheck };
                state = GCHandle.ToIntPtr(GCHandle.Alloc(abort));
                p.abort_check = Marshal.GetFunctionPointerForDelegate(CallbackState.AbortThunk);
                p.abort_user = state;
            }
            Status s = Native.xdan_context_new(model.Live, ref p, out ContextHandle h);
            if (s != Status.Ok)
            {
                var e = Library.Error(s, "xdan_context_new");
                if (state != IntPtr.Zero) GCHandle.FromIntPtr(state).Free();
                h.Dispose();
                throw e;
            }
            System.Threading.Interlocked.Increment(ref NativeHandles.contextsCreated);
            h.callbackState = state; // freed by the handle, after the native context
            Handle = h;
        }

        public void Dispose() => Handle.Dispose();

        internal ContextHandle Live
        {
            get
            {
                if (Handle.IsClosed) throw new ObjectDisposedException(nameof(Context));
                return Handle;
            }
        }

        private void Finish(Status s, string op)
        {
            abort?.RethrowIfAny();
            Library.Check(s, op);
        }

        /// <summary>Appends tokens to sequence seq and runs the model; on error the sequence is unchanged.</summary>
        public void Step(uint seq, params int[] tokens)
        {
            var h = Live;
            var t = tokens.Length > 0 ? tokens : new int[1];
            Finish(Native.xdan_step(h, seq, t, (UIntPtr)tokens.Length), "xdan_step");
        }

        /// <summary>Several sequences in one forward pass, all or nothing.</summary>
        public void StepBatch(IList<SeqTokens> items)
        {
            var h = Live;
            var raw = new Native.SeqTokens[Math.Max(1, items.Count)];
            var pins = new GCHandle[items.Count];
            try
            {
                for (int i = 0; i < items.Count; i++)
                {
                    var toks = items[i].Tokens.Length > 0 ? items[i].Tokens : new int[1];
                    pins[i] = GCHandle.Alloc(toks, GCHandleType.Pinned);
                    raw[i].seq = items[i].Seq;
                    raw[i].tokens = pins[i].AddrOfPinnedObject();
                    raw[i].n = (UIntPtr)items[i].Tokens.Length;
                }
                Finish(Native.xdan_step_batch(h, raw, (UIntPtr)items.Count), "xdan_step_batch");
            }
            finally
            {
                foreach (var pin in pins)
                    if (pin.IsAllocated) pin.Free();
            }
        }

        /// <summary>A copy of the last logits of seq.</summary>
        public float[] Logits(uint seq)
        {
            Library.Check(Native.xdan_logits(Live, seq, out IntPtr p, out UIntPtr n), "xdan_logits");
            var out_ = new float[(int)n];
            Marshal.Copy(p, out_, 0, out_.Length);
            return out_;
        }

        public uint SeqLen(uint seq) => Native.xdan_seq_len(Live, seq);
        public void SeqTruncate(uint seq, uint len) => Library.Check(Native.xdan_seq_truncate(Live, seq, len), "xdan_seq_truncate");
        public void SeqClear(uint seq) => Library.Check(Native.xdan_seq_clear(Live, seq), "xdan_seq_clear");
        /// <summary>dst becomes a copy of src sharing its KV blocks (no KV memory copied).</summary>
        public void SeqFork(uint src, uint dst) => Library.Check(Native.xdan_seq_fork(Live, src, dst), "xdan_seq_fork");
        public void SeqSave(uint seq, string path) => Library.Check(Native.xdan_seq_save(Live, seq, Native.Utf8Z(path)), "xdan_seq_save");
        public void SeqLoad(uint seq, string path) => Library.Check(Native.xdan_seq_load(Live, seq, Native.Utf8Z(path)), "xdan_seq_load");

        public KvStats KvStats
        {
            get
            {
                var st = new Native.KvStats { size = (uint)Marshal.SizeOf(typeof(Native.KvStats)) };
                Library.Check(Native.xdan_kv_stats_get(Live, ref st), "xdan_kv_stats_get");
                return new KvStats
                {
                    CapacityTokens = st.capacity_tokens, UsedTokens = st.used_tokens,
                    SharedTokens = st.shared_tokens, Bytes = st.bytes,
                };
            }
        }
    }

    public sealed class SamplerParams
    {
        public float Temperature, TopP, MinP, RepeatPenalty, FrequencyPenalty, PresencePenalty;
        public int TopK, RepeatLastN;
        public ulong Seed;

        public SamplerParams()
        {
            var p = Native.InitParams<Native.SamplerParams>(Native.xdan_sampler_params_init);
            Temperature = p.temperature; TopK = p.top_k; TopP = p.top_p; MinP = p.min_p;
            RepeatPenalty = p.repeat_penalty; RepeatLastN = p.repeat_last_n;
            FrequencyPenalty = p.frequency_penalty; PresencePenalty = p.presence_penalty; Seed = p.seed;
        }

        public static SamplerParams Greedy() => new SamplerParams { Temperature = 0 };
    }

    /// <summary>Picks tokens from logits, with its own history and seed; one thread at a time.</summary>
    public sealed class Sampler : IDisposable
    {
        internal readonly SamplerHandle Handle;

        public Sampler(Model model, SamplerParams parameters = null)
        {
            parameters = parameters ?? new SamplerParams();
            var p = Native.InitParams<Native.SamplerParams>(Native.xdan_sampler_params_init);
            p.size = (uint)Marshal.SizeOf(typeof(Native.SamplerParams));
            p.temperature = parameters.Temperature;
            p.top_k = parameters.TopK;
            p.top_p = parameters.TopP;
            p.min_p = parameters.MinP;
            p.repeat_penalty = parameters.RepeatPenalty;
            p.repeat_last_n = parameters.RepeatLastN;
            p.frequency_penalty = parameters.FrequencyPenalty;
            p.presence_penalty = parameters.PresencePenalty;
            p.seed = parameters.Seed;
            Status s = Native.xdan_sampler_new(model.Live, ref p, out SamplerHandle h);
            if (s != Status.Ok)
            {
                var e = Library.Error(s, "xdan_sampler_new");
                h.Dispose();
                throw e;
            }
            System.Threading.Interlocked.Increment(ref NativeHandles.samplersCreated);
            Handle = h;
        }

        public void Dispose() => Handle.Dispose();

        internal SamplerHandle Live
        {
            get
            {
                if (Handle.IsClosed) throw new ObjectDisposedException(nameof(Sampler));
                return Handle;
            }
        }

        /// <summary>Picks a token from seq's last logits and records it in the history.</summary>
        public int Sample(Context ctx, uint seq)
        {
            var s = Live;
            Library.Check(Native.xdan_sample(ctx.Live, seq, s, out int t), "xdan_sample");
            return t;
        }

        public void Accept(params int[] tokens)
        {
            var t = tokens.Length > 0 ? tokens : new int[1];
            Library.Check(Native.xdan_sampler_accept(Live, t, (UIntPtr)tokens.Length), "xdan_sampler_accept");
        }

        /// <summary>Forgets the history.</summary>
        public void Reset() => Native.xdan_sampler_reset(Live);
    }
}
