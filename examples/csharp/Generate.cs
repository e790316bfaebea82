// Generates text from a prompt with the C# binding (bindings/csharp).
//
// Build with Mono:  mcs -r:Xdan.dll -out:Generate.exe examples/csharp/Generate.cs
//   (Xdan.dll from: mcs -target:library -out:Xdan.dll bindings/csharp/src/*.cs)
// Run:  LD_LIBRARY_PATH=target/release mono Generate.exe MODEL.gguf "Once upon a time" [N] [TEMP] [SEED]
using System;
using System.Globalization;
using System.IO;
using Xdan;

internal static class Generate
{
    private static int Main(string[] args)
    {
        if (args.Length < 1)
        {
            Console.Error.WriteLine("usage: Generate.exe MODEL.gguf [PROMPT] [N] [TEMP] [SEED]");
            return 2;
        }
        string prompt = args.Length > 1 ? args[1] : "Once upon a time";
        int n = args.Length > 2 ? int.Parse(args[2], CultureInfo.InvariantCulture) : 32;
        float temp = args.Length > 3 ? float.Parse(args[3], CultureInfo.InvariantCulture) : 0.8f;
        ulong seed = args.Length > 4 ? ulong.Parse(args[4], CultureInfo.InvariantCulture) : 1;
        try
        {
            using (var model = Model.Load(args[0]))
            using (var ctx = new Context(model, new ContextParams { NCtx = 1024 }))
            using (var sampler = new Sampler(model, new SamplerParams { Temperature = temp, Seed = seed }))
            {
                int[] tokens = model.Tokenize(prompt);
                sampler.Accept(tokens);
                ctx.Step(0, tokens);
                Console.Write(prompt);
                for (int i = 0; i < n; i++)
                {
                    int t = sampler.Sample(ctx, 0);
                    if (model.IsEog(t)) break;
                    Console.Write(model.TokenPiece(t));
                    ctx.Step(0, t);
                }
                Console.WriteLine();
            }
            return 0;
        }
        catch (FileNotFoundException e)
        {
            Console.Error.WriteLine("no such model file: " + e.FileName + " (" + e.Message + ")");
            return 1;
        }
        catch (XdanException e)
        {
            Console.Error.WriteLine(e.ToString());
            return 1;
        }
    }
}
