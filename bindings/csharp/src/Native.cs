// The C ABI as P/Invoke declarations (include/xdan.h). Structs are blittable: C bool fields are
// bytes, size_t is UIntPtr, callbacks are raw function pointers made from long-lived delegates.
using System;
using System.Runtime.InteropServices;

namespace Xdan
{
    /// <summary>The library's status codes (xdan_status).</summary>
    public enum Status
    {
        Ok = 0,
        InvalidArg = 1,
        Io = 2,
        Format = 3,
        Unsupported = 4,
        OutOfMemory = 5,
        ContextFull = 6,
        Device = 7,
        Cancelled = 8,
        BufferTooSmall = 9,
        Busy = 10,
        Internal = 11,
    }

    public enum Device { Auto = 0, Cpu = 1, Cuda = 2 }
    public enum KvType { F16 = 0, F32 = 1, Q8_0 = 2 }
    public enum LogLevel { Error = 0, Warn = 1, Info = 2, Debug = 3 }

    /// <summary>Marks callbacks called from native code (Unity's IL2CPP looks for this name).</summary>
    [AttributeUsage(AttributeTargets.Method)]
    public sealed class MonoPInvokeCallbackAttribute : Attribute
    {
        public MonoPInvokeCallbackAttribute(Type delegateType) { DelegateType = delegateType; }
        public Type DelegateType { get; }
    }

    internal static class Native
    {
        internal const string Lib = "xdan";

        [UnmanagedFunctionPointer(CallingConvention.Cdecl)]
        [return: MarshalAs(UnmanagedType.I1)]
        internal delegate bool ProgressFn(float fraction, IntPtr user);

        [UnmanagedFunctionPointer(CallingConvention.Cdecl)]
        internal delegate void LogFn(int level, IntPtr message, IntPtr user);

        [StructLayout(LayoutKind.Sequential)]
        internal struct ModelParams
        {
            public uint size;
            public int device;
            public int cuda_device;
            public ulong vram_budget;
            public int n_threads;
            public byte use_mmap;
            public byte vocab_only;
            public IntPtr progress;
            public IntPtr progress_user;
        }

        [StructLayout(LayoutKind.Sequential)]
        internal struct ModelInfo
        {
            public uint size;
            [MarshalAs(UnmanagedType.ByValArray, SizeConst = 32)]
            public byte[] arch;
            public uint n_vocab, n_ctx_train, n_embd, n_layer, n_head, n_head_kv, n_ff;
            public uint n_expert, n_expert_used;
            public ulong n_params, file_bytes;
            public int bos, eos;
        }

        [StructLayout(LayoutKind.Sequential)]
        internal struct ContextParams
        {
            public uint size;
            public uint n_ctx;
            public uint n_seq_max;
            public uint n_kv_tokens;
            public uint n_batch;
            public int kv_type;
            public int n_threads;
            public IntPtr abort_check;
            public IntPtr abort_user;
        }

        [StructLayout(LayoutKind.Sequential)]
        internal struct SamplerParams
        {
            public uint size;
            public float temperature;
            public int top_k;
            public float top_p;
            public float min_p;
            public float repeat_penalty;
            public int repeat_last_n;
            public float frequency_penalty;
            public float presence_penalty;
            public ulong seed;
        }

        [StructLayout(LayoutKind.Sequential)]
        internal struct KvStats
        {
            public uint size;
            public ulong capacity_tokens, used_tokens, shared_tokens, bytes;
        }

        [StructLayout(LayoutKind.Sequential)]
        internal struct SeqTokens
        {
            public uint seq;
            public IntPtr tokens;
            public UIntPtr n;
        }

        [StructLayout(LayoutKind.Sequential)]
        internal struct ChatMessage
        {
            public IntPtr role;
            public IntPtr content;
        }

        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] internal static extern uint xdan_abi_version();
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] internal static extern IntPtr xdan_version();
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] internal static extern IntPtr xdan_status_name(Status s);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] internal static extern IntPtr xdan_last_error();
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] internal static extern void xdan_set_log_callback(IntPtr fn, IntPtr user);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
        [return: MarshalAs(UnmanagedType.I1)]
        internal static extern bool xdan_cuda_available();

        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] internal static extern void xdan_model_params_init(IntPtr p);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] internal static extern Status xdan_model_load(byte[] path, ref ModelParams p, out ModelHandle m);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] internal static extern void xdan_model_free(IntPtr m);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] internal static extern Status xdan_model_info_get(ModelHandle m, ref ModelInfo info);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] internal static extern Status xdan_model_meta(ModelHandle m, byte[] key, byte[] buf, UIntPtr cap, out UIntPtr len);

        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] internal static extern Status xdan_tokenize(ModelHandle m, byte[] text, UIntPtr textLen, uint flags, int[] tokens, UIntPtr cap, out UIntPtr n);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] internal static extern Status xdan_detokenize(ModelHandle m, int[] tokens, UIntPtr n, uint flags, byte[] buf, UIntPtr cap, out UIntPtr len);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] internal static extern Status xdan_token_piece(ModelHandle m, int token, byte[] buf, UIntPtr cap, out UIntPtr len);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
        [return: MarshalAs(UnmanagedType.I1)]
        internal static extern bool xdan_token_is_eog(ModelHandle m, int token);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] internal static extern Status xdan_chat_apply(ModelHandle m, ChatMessage[] msgs, UIntPtr n, [MarshalAs(UnmanagedType.I1)] bool addAssistantPrompt, byte[] buf, UIntPtr cap, out UIntPtr len);

        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] internal static extern void xdan_context_params_init(IntPtr p);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] internal static extern Status xdan_context_new(ModelHandle m, ref ContextParams p, out ContextHandle c);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] internal static extern void xdan_context_free(IntPtr c);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] internal static extern Status xdan_step(ContextHandle c, uint seq, int[] tokens, UIntPtr n);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] internal static extern Status xdan_step_batch(ContextHandle c, SeqTokens[] items, UIntPtr n);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] internal static extern Status xdan_logits(ContextHandle c, uint seq, out IntPtr logits, out UIntPtr nVocab);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] internal static extern uint xdan_seq_len(ContextHandle c, uint seq);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] internal static extern Status xdan_seq_truncate(ContextHandle c, uint seq, uint len);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] internal static extern Status xdan_seq_clear(ContextHandle c, uint seq);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] internal static extern Status xdan_seq_fork(ContextHandle c, uint src, uint dst);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] internal static extern Status xdan_seq_save(ContextHandle c, uint seq, byte[] path);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] internal static extern Status xdan_seq_load(ContextHandle c, uint seq, byte[] path);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] internal static extern Status xdan_kv_stats_get(ContextHandle c, ref KvStats st);

        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] internal static extern void xdan_sampler_params_init(IntPtr p);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] internal static extern Status xdan_sampler_new(ModelHandle m, ref SamplerParams p, out SamplerHandle s);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] internal static extern Status xdan_sample(ContextHandle c, uint seq, SamplerHandle s, out int token);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] internal static extern Status xdan_sampler_accept(SamplerHandle s, int[] tokens, UIntPtr n);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] internal static extern void xdan_sampler_reset(SamplerHandle s);
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)] internal static extern void xdan_sampler_free(IntPtr s);

        /// <summary>
        /// Runs a *_params_init into a buffer larger than any version of the struct, then copies out
        /// the fields this binding knows and sets size to the binding's struct size: a newer
        /// library with appended fields can never write past our struct.
        /// </summary>
        internal static T InitParams<T>(Action<IntPtr> init) where T : struct
        {
            IntPtr buf = Marshal.AllocHGlobal(1024);
            try
            {
                for (int i = 0; i < 1024; i += 8) Marshal.WriteInt64(buf, i, 0);
                init(buf);
                return (T)Marshal.PtrToStructure(buf, typeof(T));
            }
            finally
            {
                Marshal.FreeHGlobal(buf);
            }
        }

        internal static string Utf8(IntPtr p)
        {
            if (p == IntPtr.Zero) return "";
            int n = 0;
            while (Marshal.ReadByte(p, n) != 0) n++;
            var bytes = new byte[n];
            Marshal.Copy(p, bytes, 0, n);
            return System.Text.Encoding.UTF8.GetString(bytes);
        }

        /// <summary>UTF-8 bytes with a terminating NUL, for `const char *` arguments.</summary>
        internal static byte[] Utf8Z(string s)
        {
            int n = System.Text.Encoding.UTF8.GetByteCount(s);
            var b = new byte[n + 1];
            System.Text.Encoding.UTF8.GetBytes(s, 0, s.Length, b, 0);
            return b;
        }

        /// <summary>Copies a string into native memory, NUL-terminated (for struct fields).</summary>
        internal static IntPtr Utf8ZAlloc(string s)
        {
            byte[] b = Utf8Z(s);
            IntPtr p = Marshal.AllocHGlobal(b.Length);
            Marshal.Copy(b, 0, p, b.Length);
            return p;
        }
    }
}
