// SafeHandle owners of the native objects: the runtime releases them exactly once, also when a
// Dispose was forgotten (finalization), and keeps them alive for the length of each native call.
using System;
using System.Runtime.InteropServices;
using System.Threading;
using Microsoft.Win32.SafeHandles;

namespace Xdan
{
    /// <summary>Counts of native objects made and released by this binding (for leak checks).</summary>
    public static class NativeHandles
    {
        internal static long modelsCreated, modelsReleased;
        internal static long contextsCreated, contextsReleased;
        internal static long samplersCreated, samplersReleased;

        public static long ModelsCreated => Interlocked.Read(ref modelsCreated);
        public static long ModelsReleased => Interlocked.Read(ref modelsReleased);
        public static long ContextsCreated => Interlocked.Read(ref contextsCreated);
        public static long ContextsReleased => Interlocked.Read(ref contextsReleased);
        public static long SamplersCreated => Interlocked.Read(ref samplersCreated);
        public static long SamplersReleased => Interlocked.Read(ref samplersReleased);
        /// <summary>Native objects made and not yet released.</summary>
        public static long Live =>
            ModelsCreated - ModelsReleased + ContextsCreated - ContextsReleased + SamplersCreated - SamplersReleased;
    }

    internal sealed class ModelHandle : SafeHandleZeroOrMinusOneIsInvalid
    {
        public ModelHandle() : base(true) { }

        protected override bool ReleaseHandle()
        {
            Native.xdan_model_free(handle);
            Interlocked.Increment(ref NativeHandles.modelsReleased);
            return true;
        }
    }

    internal sealed class ContextHandle : SafeHandleZeroOrMinusOneIsInvalid
    {
        public ContextHandle() : base(true) { }

        /// <summary>GCHandle of the abort callback's state, freed after the context.</summary>
        internal IntPtr callbackState;

        protected override bool ReleaseHandle()
        {
            Native.xdan_context_free(handle);
            if (callbackState != IntPtr.Zero)
            {
                GCHandle.FromIntPtr(callbackState).Free();
                callbackState = IntPtr.Zero;
            }
            Interlocked.Increment(ref NativeHandles.contextsReleased);
            return true;
        }
    }

    internal sealed class SamplerHandle : SafeHandleZeroOrMinusOneIsInvalid
    {
        public SamplerHandle() : base(true) { }

        protected override bool ReleaseHandle()
        {
            Native.xdan_sampler_free(handle);
            Interlocked.Increment(ref NativeHandles.samplersReleased);
            return true;
        }
    }
}
