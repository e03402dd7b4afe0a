// sparsa learn: train the dense teacher, pool its attention, distill masks from it (oracle,
// search, gate), evaluate every method against it, or run the whole chain (demo).
#include "cli/args.hpp"
#include "cli/commands.hpp"
#include "cli/outputs.hpp"
#include "engine/error.hpp"
#include "io/mask_io.hpp"
#include "io/npy.hpp"
#include "io/atomic_file.hpp"
#include "learn/distill.hpp"
#include "learn/eval.hpp"
#include "learn/pool.hpp"
#include "learn/ruler_eval.hpp"
#include "learn/teacher.hpp"

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <string>

namespace sparsa::cli {

namespace {

const char* const kLearnHelp = R"(usage: sparsa learn teacher [OPTIONS] [-o teacher.bin]
       sparsa learn pool --teacher teacher.bin -o pooled.npy
       sparsa learn distill --method oracle|search|gate --teacher teacher.bin -o OUT
       sparsa learn eval --teacher teacher.bin --gate gate.json -o DIR
       sparsa learn ruler [--seeds 1,2,3 | --teachers A.bin,B.bin] [OPTIONS] [-o DIR]
       sparsa learn demo [-o DIR]

Learned sparsity (docs/learn.md). A small causal transformer (the teacher) learns recall tasks
with sparsa's CPU engine; its attention is distilled into block-sparse masks and every method
is measured against it and against trivial baselines.

teacher   train the teacher, print a progress line (step, loss, accuracy, tokens/s, and every
          100 steps the validation accuracy per task), save it
  --task ruler|single|multikey|multivalue|multiquery|mqar|passkey|mix (ruler: the four needle
  tasks and mqar in turn)  --n N (1024)  --needles M (4)  --pairs P (8)  --queries Q (8)
  --d D (128)  --heads H (2)  --head-dim W (0: d / heads)  --kv-heads K (0: as many as heads;
  K must divide H)  --positions none|rotary|sinusoidal (none)  --bidirectional (the first,
  non-causal teacher)  --layers L (2)  --mlp M (256)  --steps S (3000, at most)  --batch B (16)
  --lr X (0.002)  --seed S (1)  --stop-accuracy A (0.98: stop once validation accuracy
  reaches it)  --max-minutes M (19)  --qk-identity A (0: wq, wk start at A * I plus noise)
  -o FILE (teacher.bin)  --quiet  --from FILE (go on training that checkpoint at this --n and
  --task: a curriculum from a short n; the model options are the checkpoint's)
  Attention shaping, off by default (recorded in the checkpoint): --sharpness X (X > 0 adds
  X * mean attention-row entropy to the training loss)  --own-block X (adds X * mean
  -log(share of a row's attention on its own block) over the rows no answer is asked at).
  Both come on once validation accuracy first reaches --stop-accuracy, ramp up, and run
  --shape-steps S (800) more steps at least
pool      the teacher's attention pooled per block on held-out inputs (or Q/K dumps):
          a float64 array [2, layers, heads, blocks, blocks], [0] the mass of each block
          (sum of P), [1] its largest P, both averaged over the inputs
distill   --method oracle: the top blocks of each row of one held-out input (--input I, 0),
            at --density D (0.125), saved as masks (.npz)
          --method search: per (layer, head) the cheapest family pattern keeping --share S
            (0.9) of the attention on --inputs N (32) training-stream inputs, as a .pat script
          --method gate: learned block gates (SeerAttention-style) trained with KL against the
            teacher's block-pooled attention on --inputs N (32) inputs, saved as JSON
            (--steps S, 300; --hidden H, 16; --gate-target sum|max: pool the target by
            each block's mass (default) or its largest P; --gate-query rows|block (rows):
            score each query row against a key block and pool the rows by log-sum-exp, or
            pool the queries first, as SeerAttention does; --gate-key keys|bounds|pooled (keys):
            every key projected and scored, a low-rank indexer, or each key block's largest
            and smallest projected key per unit, as Quest bounds q . k, or the mean and max
            of its keys, as SeerAttention; --gate-target rows|sum|max (rows): each row
            learns its own blocks, or the block-pooled target)
eval      every method at block densities 3%, 6%, 12.5%, 25% on --inputs N (64) held-out
          inputs: recall, relative L1 error, accuracy, forward time; writes DIR/report.md,
          report.json, recall.png, accuracy.png (search is built from --search-inputs, 32)
ruler     for each of --seeds (1,2,3) train a teacher (the teacher options above; saved as
          DIR/teacher-seedS.bin), or read --teachers, and measure on --test-inputs N (100)
          test-stream sequences, at --densities D1,D2 (0.125): dense, the diagonal block
          alone, the untrained identity gate (exact q.k scores), the best fixed pattern at the
          density (chosen on --validation-inputs N (20) validation-stream sequences), a
          trained --gate G.json if given, the cheap selectors (--selectors all|none (all):
          MoBA, Quest, vertical-slash, DuoAttention with its heads chosen on validation) and
          the pooled gate (trained per teacher on --pooled-gate-inputs N (64; 0: none)
          training-stream sequences of --seed, width --pooled-gate-width W (32), at most
          --pooled-gate-steps S (400) steps, early stopping on validation; --pooled-gate-target
          sum|max (sum): KL to each key block's attention mass, or to its largest row share,
          the exact-score selector's rule), the lightning
          indexer (--indexer-inputs N (64; 0: none) sequences of the same stream, 128 query
          rows each, --indexer-heads J (2) of --indexer-width W (8), at most --indexer-steps
          S (300)), each with its selection time, and the other families (--families
          all|fixed|none (all)): window, Longformer, BigBird at the density, the search's
          static script (its table from --search-inputs N (32) training-stream sequences),
          and (all) LSH and anchors through the content engine (their buckets and chunk chosen
          on validation; anchors fitted on --anchor-inputs N (8) training-stream sequences)
          and FAVOR+ with --favor-features M (256) (run in place of every layer's attention:
          its accuracy and output error); a progress line on stderr after every 100 test
          sequences (--quiet: none); writes DIR/report.md,
          report.json, depth.png with accuracy per task and per depth as mean +- standard
          deviation over the seeds, cost.png (accuracy against select + forward ms) and
          families.png (the same with every family). --replot DIR: redraw DIR's report.md,
          depth.png, cost.png, families.png from its report.json, evaluating nothing.
          --densities none: dense and the diagonal only. With --teachers, --n N measures
          them at length N (not the one they were trained at); with --seeds, --train-n N trains
          them at N and measures them at --n (one command from a short training to a long test)
demo      teacher -> search -> gate -> eval on the default config, into DIR (learn-demo)

Common: --block B (16)  --threads T.  Q/K of another model instead of the teacher (pool,
distill): --q L0.npy,L1.npy --k L0.npy,L1.npy, one [heads, n, d] file per layer.
Outputs are written whole or not at all.
)";

double number(const Args& args, const std::string& option, double fallback, double min, double max) {
    const auto text = args.value(option);
    if (!text) return fallback;
    size_t used = 0;
    double v = 0;
    try {
        v = std::stod(*text, &used);
    } catch (const std::exception&) {
        used = 0;
    }
    if (used != text->size() || !(v >= min && v <= max))
        throw Error("learn: " + option + " expects a number from " + std::to_string(min) + " to " + std::to_string(max) + "; got '" + *text + "'");
    return v;
}

std::vector<std::string> split_commas(const std::string& text) {
    std::vector<std::string> out;
    size_t start = 0;
    while (true) {
        const size_t comma = text.find(',', start);
        out.push_back(text.substr(start, comma - start));
        if (comma == std::string::npos) break;
        start = comma + 1;
    }
    return out;
}

const std::set<std::string> kValues = {"--task", "--n", "--d", "--heads", "--layers", "--mlp", "--steps", "--batch", "--lr",
                                       "--seed", "--stop-accuracy", "--max-minutes", "-o", "--teacher", "--method", "--density",
                                       "--share", "--inputs", "--input", "--hidden", "--gate", "--block", "--threads", "--q",
                                       "--k", "--search-inputs", "--qk-identity", "--gate-target", "--gate-query", "--gate-key", "--sharpness",
                                       "--own-block", "--shape-steps", "--head-dim", "--kv-heads", "--positions", "--needles", "--pairs",
                                       "--queries", "--seeds", "--test-inputs", "--validation-inputs", "--densities", "--teachers", "--from",
                                       "--selectors", "--pooled-gate-inputs", "--pooled-gate-width", "--pooled-gate-steps", "--pooled-gate-target",
                                       "--indexer-inputs", "--indexer-heads", "--indexer-width", "--indexer-steps", "--replot",
                                       "--families", "--anchor-inputs", "--favor-features", "--train-n"};
const std::set<std::string> kSwitches = {"--help", "--quiet", "--bidirectional"};

// The teacher's attention-shaping defaults and the gate's kinds (docs/learn.md says how they were
// chosen, with the figures of the others).
constexpr double kSharpnessDefault = 0;
constexpr double kOwnBlockDefault = 0;   // the causal lab model is trained without shaping (issue 16)
constexpr int64_t kShapeStepsDefault = 800;
constexpr const char* kGateQueryDefault = "rows";
constexpr const char* kGateKeyDefault = "keys";
constexpr const char* kGateTargetDefault = "rows";


struct Common {
    int32_t block = 16;
    int threads = 0;
    uint64_t seed = 1;
};

Common common(const Args& args) {
    Common c;
    c.block = args.has("--block") ? args.block_size() : 16;
    c.threads = static_cast<int>(args.integer("--threads", 0, 0, 1024));
    c.seed = static_cast<uint64_t>(args.integer("--seed", 1, 0, INT64_MAX));
    return c;
}

// --gate-query block|rows, --gate-key pooled|bounds (learn/distill.hpp, BlockGate): a gate of
// those kinds, not yet trained.
learn::BlockGate gate_new(const Args& args, const Common& c, int64_t layers, int64_t heads, int64_t head_dim, int64_t hidden) {
    learn::GateQuery query;
    learn::GateKey key;
    try {
        query = learn::gate_query_parse(args.value("--gate-query").value_or(kGateQueryDefault));
        key = learn::gate_key_parse(args.value("--gate-key").value_or(kGateKeyDefault));
    } catch (const Error& e) {
        throw Error(std::string("learn: --gate-query / --gate-key: ") + e.what());
    }
    return learn::gate_init(layers, heads, head_dim, hidden, c.block, c.seed, query, key);
}

// --gate-target sum|max|rows: what the gate learns (learn/distill.hpp, GateTrainOptions and
// BlockGate::row_targets).
void gate_target_apply(const Args& args, learn::BlockGate& gate, learn::GateTrainOptions& o) {
    const std::string target = args.value("--gate-target").value_or(kGateTargetDefault);
    if (target != "sum" && target != "max" && target != "rows")
        throw Error("learn: --gate-target must be sum, max or rows; got '" + target + "'");
    if (target == "rows" && gate.query != learn::GateQuery::rows)
        throw Error("learn: --gate-target rows needs --gate-query rows (each row predicts its own blocks)");
    o.max_pooled = target == "max";
    gate.row_targets = target == "rows";
}

learn::Teacher teacher_from(const Args& args) {
    const auto path = args.value("--teacher");
    if (!path) throw Error("learn: --teacher FILE is required (train one with 'sparsa learn teacher -o teacher.bin')");
    return learn::teacher_load(*path);
}

// Attention inputs for search and the gate: the teacher's (training stream, calibration part) or
// Q/K dumps.
learn::AttentionSample sample_from(const Args& args, const Common& c, int64_t inputs) {
    if (args.has("--q") || args.has("--k")) {
        if (!args.has("--q") || !args.has("--k")) throw Error("learn: give both --q and --k (one .npy file per layer each)");
        const learn::QkDump dump = learn::qk_dump_load(split_commas(*args.value("--q")), split_commas(*args.value("--k")));
        learn::AttentionSample s;
        s.q = {dump.q};
        s.k = {dump.k};
        s.lse.push_back({});
        for (size_t l = 0; l < dump.q.size(); ++l) s.lse[0].push_back(learn::dense_lse(dump.q[l], dump.k[l], c.block));
        return s;
    }
    return learn::attention_sample(teacher_from(args), c.seed, learn::kCalibrationFirst, inputs, c.block, c.threads);
}

std::string output(const Args& args, const std::string& fallback) {
    const auto o = args.value("-o");
    return o ? *o : fallback;
}

// n: the length to train at (0: --n).
learn::TrainReport run_teacher(const Args& args, const Common& c, learn::Teacher& teacher, int64_t n = 0) {
    learn::TaskConfig task;
    task.kind = learn::task_kind_parse(args.value("--task").value_or("ruler"));
    task.n = n > 0 ? n : args.integer("--n", 1024, 16, 65536);
    task.needles = args.integer("--needles", task.needles, 1, 10);
    task.pairs = args.integer("--pairs", task.pairs, 1, 100000);
    task.queries = args.integer("--queries", task.queries, 1, 100000);
    learn::TeacherConfig model = learn::teacher_config_default(task);
    model.d = args.integer("--d", model.d, 2, 1024);
    model.heads = args.integer("--heads", model.heads, 1, 256);
    model.head_width = args.integer("--head-dim", 0, 0, 256);   // 0: d / heads
    model.kv_heads = args.integer("--kv-heads", 0, 0, 256);
    model.layers = args.integer("--layers", model.layers, 1, 64);
    model.mlp = args.integer("--mlp", model.mlp, 1, 8192);
    model.causal = !args.has("--bidirectional");
    try {
        model.positions = learn::positions_parse(args.value("--positions").value_or("none"));
    } catch (const Error& e) {
        throw Error(std::string("learn: --positions: ") + e.what());
    }
    model.qk_identity = number(args, "--qk-identity", 0, 0, 100);
    learn::TrainOptions o;
    o.seed = c.seed;
    o.threads = c.threads;
    o.steps = args.integer("--steps", 3000, 1, 10000000);
    o.batch = args.integer("--batch", 16, 1, 4096);
    o.lr = number(args, "--lr", 2e-3, 1e-6, 1.0);
    o.stop_accuracy = number(args, "--stop-accuracy", 0.98, 0.0, 1.01);
    o.max_seconds = 60 * number(args, "--max-minutes", 19, 0, 1e6);
    o.sharpness = number(args, "--sharpness", kSharpnessDefault, 0, 100);
    o.own_block = number(args, "--own-block", kOwnBlockDefault, 0, 100);
    o.sharpen_steps = args.integer("--shape-steps", kShapeStepsDefault, 1, 10000000);
    o.progress = !args.has("--quiet");
    if (const auto from = args.value("--from")) {
        // Go on training a checkpoint, at this task's n (a curriculum: learn at a short n first).
        for (const char* option : {"--d", "--heads", "--head-dim", "--kv-heads", "--layers", "--mlp", "--positions", "--bidirectional", "--qk-identity"})
            if (args.has(option)) throw Error(std::string("learn: ") + option + " cannot be given with --from (the model is the checkpoint's)");
        teacher = learn::teacher_load(*from);
        if (teacher.config.vocab != task.vocab())
            throw Error("learn: --from " + *from + " has a vocabulary of " + std::to_string(teacher.config.vocab) + " tokens, the task " +
                        std::to_string(task.vocab()) + " (give the checkpoint's keys, values and fillers)");
        teacher.task = task;
        model = teacher.config;
    } else {
        teacher = learn::teacher_init(model, task, c.seed);
    }
    std::fprintf(stderr, "teacher: %s, %lld layers x %lld heads (%lld key/value heads) of width %lld, d %lld, %s positions, %lld parameters; task %s, n %lld\n",
                 model.causal ? "causal" : "bidirectional", static_cast<long long>(model.layers), static_cast<long long>(model.heads),
                 static_cast<long long>(model.kv_head_count()), static_cast<long long>(model.head_dim()), static_cast<long long>(model.d),
                 learn::positions_name(model.positions).c_str(), static_cast<long long>(teacher.params.size()),
                 learn::task_kind_name(task.kind).c_str(), static_cast<long long>(task.n));
    return learn::teacher_train(teacher, o);
}

std::string train_summary(const learn::TrainReport& r) {
    char b[512];
    std::snprintf(b, sizeof b, "trained %lld steps in %.1f s (%.0f tokens/s, median step %.2f s): loss %.4f -> %.4f; validation accuracy %.4f (",
                  static_cast<long long>(r.steps), r.seconds, r.tokens_per_second, r.seconds_per_step, r.first_loss, r.last_loss,
                  r.held_out_accuracy);
    std::string text = b;
    const char* sep = "";
    for (size_t kind = 0; kind < learn::task_kinds_single().size(); ++kind)
        if (r.held_out_scores.kind_answers(kind) > 0) {
            std::snprintf(b, sizeof b, "%s%s %.4f", sep, learn::task_kind_name(learn::task_kinds_single()[kind]).c_str(),
                          r.held_out_scores.kind_accuracy(kind));
            text += b;
            sep = ", ";
        }
    text += ")";
    if (r.last_entropy > 0) {
        std::snprintf(b, sizeof b, "; from step %lld with the shaping terms, mean attention-row entropy %.3f -> %.3f nats, own-block share %.3f -> %.3f",
                      static_cast<long long>(r.sharpen_from), r.first_entropy, r.last_entropy, r.first_own_block, r.last_own_block);
        text += b;
    }
    return text;
}

int learn_teacher(const Args& args, OutputSet& outputs) {
    const Common c = common(args);
    const std::string path = output(args, "teacher.bin");
    outputs.output("-o", path);
    learn::Teacher teacher;
    const learn::TrainReport r = run_teacher(args, c, teacher);
    learn::teacher_save(teacher, path);
    outputs.say("%s\nwrote %s\n", train_summary(r).c_str(), path.c_str());
    outputs.commit();
    return 0;
}

int learn_pool(const Args& args, OutputSet& outputs) {
    const Common c = common(args);
    const int64_t inputs = args.integer("--inputs", 32, 1, 100000);
    const std::string path = output(args, "pooled.npy");
    outputs.output("-o", path);
    learn::AttentionSample s;
    if (args.has("--q") || args.has("--k")) s = sample_from(args, c, inputs);
    else s = learn::attention_sample(teacher_from(args), learn::task_held_out_seed(c.seed), 0, inputs, c.block, c.threads);
    const TensorShape shape = s.q[0][0].shape;
    learn::PooledAttention p = learn::pooled_zeros(s.layers(), shape.heads, shape.n, c.block);
    for (int64_t b = 0; b < s.inputs(); ++b)
        for (int64_t l = 0; l < s.layers(); ++l) learn::pooled_add_layer(p, l, s.q[b][l], s.k[b][l], s.causal);
    learn::pooled_finish(p, s.inputs());
    std::vector<double> both = p.sum;
    both.insert(both.end(), p.max.begin(), p.max.end());
    npy_save(npy_array_make<double>({2, p.layers, p.heads, p.blocks(), p.blocks()}, both), path);
    outputs.say("pooled %lld inputs, %lld layers x %lld heads, %lld x %lld blocks of %d; wrote %s\n", static_cast<long long>(s.inputs()),
                static_cast<long long>(p.layers), static_cast<long long>(p.heads), static_cast<long long>(p.blocks()),
                static_cast<long long>(p.blocks()), c.block, path.c_str());
    outputs.commit();
    return 0;
}

int learn_distill(const Args& args, OutputSet& outputs) {
    const Common c = common(args);
    const std::string method = args.value("--method").value_or("");
    const int64_t inputs = args.integer("--inputs", 32, 1, 100000);
    if (method == "oracle" || method == "search" || method == "gate") {
        outputs.output("-o", output(args, method == "oracle" ? "oracle.npz" : method == "search" ? "search.pat" : "gate.json"));
    }
    if (method == "oracle") {
        const double density = number(args, "--density", 0.125, 1e-6, 1.0);
        learn::AttentionSample s;
        if (args.has("--q") || args.has("--k")) s = sample_from(args, c, 1);
        else s = learn::attention_sample(teacher_from(args), learn::task_held_out_seed(c.seed), args.integer("--input", 0, 0, INT64_MAX), 1, c.block, c.threads);
        const TensorShape shape = s.q[0][0].shape;
        learn::PooledAttention p = learn::pooled_zeros(s.layers(), shape.heads, shape.n, c.block);
        for (int64_t l = 0; l < s.layers(); ++l) learn::pooled_add_layer(p, l, s.q[0][l], s.k[0][l], s.causal);
        const int64_t keep = learn::blocks_per_row(density, p.blocks());
        MaskSet masks = learn::oracle_masks(p, keep, s.causal);
        masks.params = {{"method", "oracle"}, {"density", std::to_string(density)}, {"blocks_per_row", std::to_string(keep)}};
        double recall = 0;
        for (int64_t l = 0; l < p.layers; ++l)
            for (int64_t h = 0; h < p.heads; ++h) recall += learn::pooled_recall(p, l, h, masks.at(l, h)) / static_cast<double>(p.layers * p.heads);
        const std::string path = output(args, "oracle.npz");
        mask_set_save(masks, path);
        outputs.say("oracle: %lld of %lld blocks per row, recall %.4f; wrote %s\n", static_cast<long long>(keep),
                    static_cast<long long>(p.blocks()), recall, path.c_str());
        outputs.commit();
        return 0;
    }
    if (method == "search") {
        const double share = number(args, "--share", 0.9, 0.0, 1.0);
        const learn::AttentionSample s = sample_from(args, c, inputs);
        const learn::SearchTable table = learn::search_table_build(s, c.block, c.threads);
        const learn::SearchResult r = learn::search_by_share(table, share);
        const std::string path = output(args, "search.pat");
        AtomicFile file(path);
        file.write(r.script.data(), r.script.size());
        file.commit();
        outputs.say("%s", r.script.c_str());
        outputs.say("wrote %s (check it with: sparsa stats %s --n %lld)\n", path.c_str(), path.c_str(), static_cast<long long>(table.n));
        outputs.commit();
        return 0;
    }
    if (method == "gate") {
        const learn::AttentionSample s = sample_from(args, c, inputs);
        const TensorShape shape = s.q[0][0].shape;
        learn::BlockGate gate = gate_new(args, c, s.layers(), shape.heads, shape.d, args.integer("--hidden", 16, 1, 1024));
        learn::GateTrainOptions o;
        o.steps = args.integer("--steps", 300, 1, 1000000);
        o.progress = !args.has("--quiet");
        gate_target_apply(args, gate, o);
        const learn::GateTrainReport r = learn::gate_train(gate, s, o);
        const std::string path = output(args, "gate.json");
        learn::gate_save(gate, path);
        outputs.say("gate: KL %.4f -> %.4f over %lld inputs; wrote %s\n", r.first_loss, r.last_loss, static_cast<long long>(s.inputs()), path.c_str());
        outputs.commit();
        return 0;
    }
    throw Error("learn distill: --method must be oracle, search or gate" + (method.empty() ? std::string(" (it is required)") : "; got '" + method + "'"));
}

std::string command_line(const std::vector<std::string>& argv) {
    std::string s = "sparsa learn";
    for (const std::string& a : argv) s += " " + a;
    return s;
}

int run_eval(const Args& args, const Common& c, const learn::Teacher& teacher, const learn::BlockGate& gate,
             const std::string& dir, const std::string& preamble, OutputSet& outputs) {
    learn::EvalOptions o;
    o.block = c.block;
    o.seed = c.seed;
    o.threads = c.threads;
    o.inputs = args.integer("--inputs", 64, 1, 100000);
    const learn::AttentionSample s = learn::attention_sample(teacher, c.seed, learn::kCalibrationFirst, args.integer("--search-inputs", 32, 1, 100000),
                                                             c.block, c.threads);
    const learn::SearchTable table = learn::search_table_build(s, c.block, c.threads);
    const learn::EvalReport report = learn::learn_evaluate(teacher, gate, table, o);
    learn::eval_report_write(report, dir, preamble);
    outputs.say("%-10s %8s %8s %8s %8s %9s %9s\n", "method", "target", "density", "recall", "L1 err", "accuracy", "fwd ms");
    for (const learn::EvalRow& r : report.rows)
        outputs.say("%-10s %7.2f%% %7.2f%% %8.4f %8.4f %8.2f%% %9.3f\n", r.method.c_str(), 100 * r.target, 100 * r.density, r.recall,
                    r.l1_error, 100 * r.accuracy, r.forward_ms);
    outputs.say("wrote %s/report.md, report.json, recall.png, accuracy.png\n", dir.c_str());
    outputs.commit();
    return 0;
}

std::string teacher_text(const learn::Teacher& t) {
    char b[768];
    std::snprintf(b, sizeof b,
                  "Teacher: %s, %lld layers x %lld heads of width %lld (%lld key/value heads), d = %lld, MLP %lld, %s positions, %zu "
                  "parameters; task %s, n = %lld (mqar: %lld pairs, %lld queries; needles: %lld).\n",
                  t.config.causal ? "causal" : "bidirectional", static_cast<long long>(t.config.layers), static_cast<long long>(t.config.heads),
                  static_cast<long long>(t.config.head_dim()), static_cast<long long>(t.config.kv_head_count()), static_cast<long long>(t.config.d),
                  static_cast<long long>(t.config.mlp), learn::positions_name(t.config.positions).c_str(), t.params.size(),
                  learn::task_kind_name(t.task.kind).c_str(), static_cast<long long>(t.task.n), static_cast<long long>(t.task.pairs),
                  static_cast<long long>(t.task.queries), static_cast<long long>(t.task.needles));
    std::string text = b;
    if (t.config.sharpness > 0 || t.config.own_block > 0) {
        text += "Attention-shaping terms ON while training (docs/learn.md), on once the task was learned: loss";
        if (t.config.sharpness > 0) {
            std::snprintf(b, sizeof b, " + %g * mean attention-row entropy", t.config.sharpness);
            text += b;
        }
        if (t.config.own_block > 0) {
            std::snprintf(b, sizeof b, " + %g * mean -log(share of a row's attention on its own block) over the rows no answer is asked at",
                          t.config.own_block);
            text += b;
        }
        text += ".\n";
    } else {
        text += "Trained without attention-shaping terms (cross entropy at answer positions only).\n";
    }
    return text;
}

int learn_eval(const Args& args, const std::vector<std::string>& argv, OutputSet& outputs) {
    const Common c = common(args);
    if (!args.has("--gate")) throw Error("learn eval: --gate FILE is required (train one with 'sparsa learn distill --method gate')");
    const std::string dir = outputs.folder("-o", output(args, "learn-eval"));
    const learn::Teacher teacher = teacher_from(args);
    const auto gate_path = args.value("--gate");
    if (!gate_path) throw Error("learn eval: --gate FILE is required (train one with 'sparsa learn distill --method gate')");
    const learn::BlockGate gate = learn::gate_load(*gate_path);
    const std::string preamble = "# Learned sparsity: evaluation\n\nCommand: `" + command_line(argv) + "`\n\n" + teacher_text(teacher);
    return run_eval(args, c, teacher, gate, dir, preamble, outputs);
}

int learn_demo(const Args& args, const std::vector<std::string>& argv, OutputSet& outputs) {
    const Common c = common(args);
    const std::string dir = outputs.folder("-o", output(args, "learn-demo"));
    const auto start = std::chrono::steady_clock::now();
    learn::Teacher teacher;
    const learn::TrainReport train = run_teacher(args, c, teacher);
    learn::teacher_save(teacher, dir + "/teacher.bin");
    std::printf("%s\n", train_summary(train).c_str());
    const learn::AttentionSample s = learn::attention_sample(teacher, c.seed, learn::kCalibrationFirst, args.integer("--search-inputs", 32, 1, 100000),
                                                             c.block, c.threads);
    const learn::SearchTable table = learn::search_table_build(s, c.block, c.threads);
    const learn::SearchResult search = learn::search_by_share(table, 0.9);
    {
        AtomicFile file(dir + "/search.pat");
        file.write(search.script.data(), search.script.size());
        file.commit();
    }
    learn::BlockGate gate = gate_new(args, c, teacher.config.layers, teacher.config.heads, teacher.config.head_dim(), 16);
    learn::GateTrainOptions go;
    go.progress = !args.has("--quiet");
    gate_target_apply(args, gate, go);
    const learn::GateTrainReport gr = learn::gate_train(gate, s, go);
    learn::gate_save(gate, dir + "/gate.json");
    char line[384];
    std::snprintf(line, sizeof line, "Gate: query side %s, key side %s, %s targets, hidden %lld; trained on %lld training-stream inputs, KL %.4f -> %.4f.\n",
                  learn::gate_query_name(gate.query).c_str(), learn::gate_key_name(gate.key).c_str(),
                  gate.row_targets ? "row" : go.max_pooled ? "block (max)" : "block (sum)", static_cast<long long>(gate.hidden),
                  static_cast<long long>(s.inputs()), gr.first_loss, gr.last_loss);
    const double minutes = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() / 60;
    char timing[128];
    std::snprintf(timing, sizeof timing, "Teacher training plus search and gate took %.1f minutes.\n", minutes);
    const std::string preamble = "# Learned sparsity: the default chain\n\nCommand: `" + command_line(argv) + "` (demo: teacher, search, gate, eval)\n\n" +
                                 teacher_text(teacher) + "\nTraining: " + train_summary(train) + ".\n\n" + line + timing +
                                 "\nSearch at share 0.9: see [search.pat](search.pat).\n";
    return run_eval(args, c, teacher, gate, dir, preamble, outputs);
}

// --seeds 1,2,3 or --teachers a.bin,b.bin: train a teacher per seed (saved in DIR) or read them;
// evaluate each on the test stream with the trivial baselines; one report over all.
int learn_ruler(const Args& args, const std::vector<std::string>& argv, OutputSet& outputs) {
    if (const auto replot = args.value("--replot")) {   // redraw from report.json, evaluating nothing
        learn::ruler_report_replot(*replot);
        outputs.say("wrote %s/report.md, depth.png, cost.png, families.png (from its report.json)\n", replot->c_str());
        outputs.commit();
        return 0;
    }
    const Common c = common(args);
    const std::string dir = outputs.folder("-o", output(args, "learn-ruler"));
    learn::RulerEvalOptions o;
    o.block = c.block;
    o.threads = c.threads;
    o.test_inputs = args.integer("--test-inputs", 100, 1, 1000000);
    o.validation_inputs = args.integer("--validation-inputs", 20, 1, 1000000);
    const std::string selectors = args.value("--selectors").value_or("all");
    if (selectors != "all" && selectors != "none") throw Error("learn ruler: --selectors expects all or none; got '" + selectors + "'");
    o.selectors = selectors == "all";
    o.pooled_gate_inputs = args.integer("--pooled-gate-inputs", 64, 0, 100000);
    o.pooled_gate_width = args.integer("--pooled-gate-width", 32, 1, 1024);
    o.pooled_gate_train.steps = args.integer("--pooled-gate-steps", 400, 1, 1000000);
    const std::string gate_target = args.value("--pooled-gate-target").value_or("sum");
    if (gate_target != "sum" && gate_target != "max")
        throw Error("learn ruler: --pooled-gate-target expects sum (each key block's attention mass) or max (its largest row share); got '" +
                    gate_target + "'");
    o.pooled_gate_max_target = gate_target == "max";
    o.indexer_inputs = args.integer("--indexer-inputs", 64, 0, 100000);
    o.indexer_heads = args.integer("--indexer-heads", 2, 1, 64);
    o.indexer_width = args.integer("--indexer-width", 8, 1, 1024);
    o.indexer_train.steps = args.integer("--indexer-steps", 300, 1, 1000000);
    const std::string families = args.value("--families").value_or("all");
    if (families != "all" && families != "fixed" && families != "none")
        throw Error("learn ruler: --families expects all (fixed patterns, search script, lsh, anchors, favor+), fixed (the first two) or "
                    "none; got '" + families + "'");
    o.fixed_families = families != "none";
    o.search_inputs = args.integer("--search-inputs", 32, 0, 100000);
    o.content_families = families == "all";
    o.content.fit_inputs = args.integer("--anchor-inputs", 8, 1, 100000);
    o.content.features = args.integer("--favor-features", 256, 1, 65536);
    o.train_seed = c.seed;
    o.time_repeats = 11;   // the machine is shared: the median of more runs
    if (const auto text = args.value("--densities")) {
        o.densities.clear();
        for (const std::string& d : *text == "none" ? std::vector<std::string>{} : split_commas(*text)) {
            size_t used = 0;
            double v = -1;
            try {
                v = std::stod(d, &used);
            } catch (const std::exception&) {
                used = 0;
            }
            if (used != d.size() || !(v > 0 && v <= 1)) throw Error("learn ruler: --densities expects numbers in (0, 1] separated by commas; got '" + d + "'");
            o.densities.push_back(v);
        }
    }
    learn::BlockGate gate;
    if (const auto gate_path = args.value("--gate")) {
        gate = learn::gate_load(*gate_path);
        o.gate = &gate;
    }
    std::vector<learn::Teacher> teachers;
    std::vector<std::string> labels, trained;
    if (const auto files = args.value("--teachers")) {
        if (args.has("--seeds")) throw Error("learn ruler: give --seeds (train) or --teachers (read), not both");
        if (args.has("--train-n")) throw Error("learn ruler: --train-n is the length --seeds trains at; --teachers are trained already (--n: the length to measure at)");
        for (const std::string& f : split_commas(*files)) {
            teachers.push_back(learn::teacher_load(f));
            labels.push_back(std::filesystem::path(f).filename().string());
            // --n: measure at another length than the one trained at (how the positions generalise).
            if (args.has("--n")) {
                trained.push_back(labels.back() + " was trained at n = " + std::to_string(teachers.back().task.n) +
                                  "; measured here at n = " + std::to_string(args.integer("--n", 1024, 16, 65536)));
                teachers.back().task.n = args.integer("--n", 1024, 16, 65536);
                learn::task_config_check(teachers.back().task);
            }
        }
    } else {
        std::vector<uint64_t> seeds;   // all parsed before any training
        for (const std::string& text : split_commas(args.value("--seeds").value_or("1,2,3"))) {
            try {
                size_t used = 0;
                seeds.push_back(std::stoull(text, &used));
                if (used != text.size() || text.empty() || text[0] == '-') throw std::invalid_argument(text);
            } catch (const std::exception&) {
                throw Error("learn ruler: --seeds expects whole numbers separated by commas; got '" + text + "'");
            }
        }
        // --train-n: train at that length, measure at --n (a teacher without positions keeps its
        // accuracy at lengths it was not trained at; training at 4,096 on a CPU takes hours)
        const int64_t measure_n = args.integer("--n", 1024, 16, 65536);
        const int64_t train_n = args.integer("--train-n", measure_n, 16, 65536);
        for (const uint64_t seed : seeds) {
            const std::string text = std::to_string(seed);
            Common seeded = c;
            seeded.seed = seed;
            learn::Teacher teacher;
            const learn::TrainReport r = run_teacher(args, seeded, teacher, train_n);
            learn::teacher_save(teacher, dir + "/teacher-seed" + text + ".bin");
            trained.push_back("seed " + text + ": " + train_summary(r));
            if (train_n != measure_n) {
                trained.back() += "; trained at n = " + std::to_string(train_n) + ", measured here at n = " + std::to_string(measure_n);
                teacher.task.n = measure_n;
                learn::task_config_check(teacher.task);
            }
            std::printf("%s\n", trained.back().c_str());
            teachers.push_back(std::move(teacher));
            labels.push_back(text);
        }
    }
    std::vector<learn::RulerEval> evals;
    for (size_t t = 0; t < teachers.size(); ++t) {
        if (t > 0 && (teachers[t].task.n != teachers[0].task.n || teachers[t].config.layers != teachers[0].config.layers ||
                      teachers[t].config.heads != teachers[0].config.heads || teachers[t].task.kind != teachers[0].task.kind))
            throw Error("learn ruler: the teachers differ in n, task or shape (" + labels[0] + " and " + labels[t] + "): give teachers of one config");
        if (!args.has("--teachers")) o.train_seed = std::stoull(labels[t]);   // the pooled gate learns from the teacher's own training stream
        if (!args.has("--quiet")) o.progress_label = labels[t];
        evals.push_back(learn::ruler_evaluate(teachers[t], o));
        std::fprintf(stderr, "evaluated %s\n", labels[t].c_str());
    }
    std::string preamble = "# Learned sparsity: RULER-style tasks, trivial baselines, seeds\n\nCommand: `" + command_line(argv) + "`\n\n" +
                           teacher_text(teachers[0]);
    for (const std::string& line : trained) preamble += "\n- " + (args.has("--teachers") ? line : "Training, " + line) + ".";
    if (!trained.empty()) preamble += "\n";
    learn::ruler_report_write(evals, labels, dir, preamble);
    for (const learn::RulerRow& r : evals[0].rows)
        if (r.density >= 0)   // FAVOR+ has no mask and no answers: its output error is in the report
            outputs.say("%-14s %7.2f%% %8.4f  accuracy %.2f%%  (seed %s)\n", r.method.c_str(), 100 * r.density, r.recall, 100 * r.scores.accuracy(),
                    labels[0].c_str());
    outputs.say("wrote %s/report.md, report.json, depth.png, cost.png, families.png\n", dir.c_str());
    outputs.commit();
    return 0;
}

} // namespace

int command_learn(const std::vector<std::string>& argv) {
    if (argv.empty() || argv[0] == "--help" || argv[0] == "-h") {
        std::fputs(kLearnHelp, argv.empty() ? stderr : stdout);
        return argv.empty() ? 2 : 0;
    }
    const std::string sub = argv[0];
    const std::vector<std::string> rest(argv.begin() + 1, argv.end());
    const Args args(rest, "learn " + sub, kValues, kSwitches);
    if (args.has("--help")) {
        std::fputs(kLearnHelp, stdout);
        return 0;
    }
    if (!args.positionals().empty()) throw Error("learn " + sub + ": unexpected argument '" + args.positionals()[0] + "' (see sparsa learn --help)");
    if (sub != "teacher" && sub != "pool" && sub != "distill" && sub != "eval" && sub != "demo" && sub != "ruler") {
        throw Error("learn: unknown step '" + sub + "' (use teacher, pool, distill, eval, ruler or demo)");
    }
    // Every file read, so that no output replaces one of them; the outputs are named in each step.
    OutputSet outputs("learn " + sub);
    if (const auto teacher = args.value("--teacher")) outputs.input(*teacher, "the teacher (--teacher)");
    if (const auto gate = args.value("--gate")) outputs.input(*gate, "the gate (--gate)");
    if (const auto from = args.value("--from")) outputs.input(*from, "the checkpoint to go on from (--from)");
    if (const auto files = args.value("--teachers"))
        for (const std::string& f : split_commas(*files)) outputs.input(f, "a teacher (--teachers)");
    for (const char* option : {"--q", "--k"}) {
        if (const auto files = args.value(option)) {
            for (const std::string& f : split_commas(*files)) outputs.input(f, std::string("a ") + option + " file");
        }
    }
    if (sub == "teacher") return learn_teacher(args, outputs);
    if (sub == "pool") return learn_pool(args, outputs);
    if (sub == "distill") return learn_distill(args, outputs);
    if (sub == "eval") return learn_eval(args, argv, outputs);
    if (sub == "ruler") return learn_ruler(args, argv, outputs);
    return learn_demo(args, argv, outputs);
}

} // namespace sparsa::cli
