using System.Runtime.CompilerServices;

// The test runner checks the P/Invoke struct layouts against the library.
[assembly: InternalsVisibleTo("XdanTests")]
