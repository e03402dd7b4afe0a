// The teacher: gradients of every parameter tensor against central finite differences (the model
// in double, attention through the CPU engine in float), learning from a fixed seed, tasks,
// checkpoints (round trip, corrupt and truncated files refused).
#include "learn/teacher.hpp"
#include "learn/causal_mask.hpp"
#include "learn/ruler_tasks.hpp"

#include "engine/cpu_attention.hpp"
#include "engine/error.hpp"

#include <catch2/catch.hpp>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>

using namespace sparsa;
using namespace sparsa::learn;

namespace {

TaskConfig tiny_task() {
    TaskConfig t;
    t.n = 32;
    t.pairs = 3;
    t.queries = 3;
    t.keys = 4;
    t.values = 4;
    t.fillers = 3;
    return t;
}

TeacherConfig tiny_model(const TaskConfig& task) {
    TeacherConfig c;
    c.vocab = task.vocab();
    c.d = 8;
    c.heads = 2;
    c.layers = 2;
    c.mlp = 12;
    return c;
}

std::string temp_path(const std::string& name) {
    return (std::filesystem::temp_directory_path() / ("sparsa_learn_" + name)).string();
}

// A one-layer, two-head teacher on passkey retrieval at n = 32, seed 7: learns in seconds.
Teacher tiny_passkey_teacher() {
    TaskConfig task;
    task.kind = TaskKind::passkey;
    task.n = 32;
    task.values = 4;
    task.fillers = 4;
    task.keys = 1;
    TeacherConfig model;
    model.vocab = task.vocab();
    model.d = 16;
    model.heads = 2;
    model.layers = 1;
    model.mlp = 16;
    return teacher_init(model, task, 7);
}

} // namespace

TEST_CASE("tasks: answers only at query positions, same for the same seed, held-out differs", "[learn]") {
    TaskConfig t;
    const TaskBatch a = task_batch(t, 5, 0, 4), b = task_batch(t, 5, 0, 4), c = task_batch(t, task_held_out_seed(5), 0, 4);
    CHECK(a.tokens == b.tokens);
    CHECK(a.tokens != c.tokens);
    for (int64_t s = 0; s < 4; ++s) {
        int64_t answers = 0;
        for (int64_t i = 0; i < t.n; ++i) {
            const int32_t target = a.targets[s * t.n + i];
            if (target < 0) continue;
            ++answers;
            CHECK(target >= t.value_token(0));
            CHECK(target < t.value_token(t.values));
            if (a.is_passkey[s]) {
                CHECK(i == t.n - 1);
            } else {
                // The asked key sits in the second half and appears once before, followed by its value.
                CHECK(i >= t.n / 2);
                bool found = false;
                for (int64_t j = 0; j + 1 < t.n / 2; ++j)
                    if (a.tokens[s * t.n + j] == a.tokens[s * t.n + i] && a.tokens[s * t.n + j + 1] == target) found = true;
                CHECK(found);
            }
        }
        CHECK(answers == (a.is_passkey[s] ? 1 : t.queries));
    }
    TaskConfig bad = t;
    bad.queries = 9;
    CHECK_THROWS_WITH(task_batch(bad, 1, 0, 1), Catch::Contains("queries = 9"));
}

TEST_CASE("teacher: gradients of every parameter tensor match central differences", "[learn][grad]") {
    const TaskConfig task = tiny_task();
    const Teacher teacher = teacher_init(tiny_model(task), task, 3);
    const TaskBatch batch = task_batch(task, 11, 0, 2);
    std::vector<double> grads;
    TeacherRunOptions run;
    run.threads = 1;
    teacher_gradients(teacher, batch, grads, run);
    const auto slots = teacher_param_slots(teacher.config);
    const double eps = 1e-3;
    for (const ParamSlot& s : slots) {
        DYNAMIC_SECTION("tensor " << s.name) {
            double err = 0, norm = 0;
            for (int64_t t = 0; t < std::min<int64_t>(s.size(), 24); ++t) {
                const int64_t e = s.offset + (t * 7919) % s.size();
                Teacher plus = teacher, minus = teacher;
                plus.params[e] += eps;
                minus.params[e] -= eps;
                const double fd = (teacher_evaluate(plus, batch, run).loss - teacher_evaluate(minus, batch, run).loss) / (2 * eps);
                err += (fd - grads[e]) * (fd - grads[e]);
                norm += fd * fd + grads[e] * grads[e];
            }
            INFO("relative error " << std::sqrt(err / std::max(norm, 1e-30)) << ", gradient norm " << std::sqrt(norm));
            // Float attention makes the differences noisy at about 1e-4 absolute.
            CHECK(std::sqrt(err) <= 1e-2 * std::sqrt(norm) + 2e-4);
            CHECK(norm > 0);   // every tensor gets a gradient
        }
    }
}

TEST_CASE("teacher: the sharpness and own-block terms' gradient matches central differences", "[learn][grad]") {
    // The terms' own gradient (gradients with them minus gradients without) against central
    // differences of lambda * mean attention-row entropy + mu * mean -log(own-block share), for
    // every parameter tensor that feeds q or k; the whole objective's gradient too.
    const TaskConfig task = tiny_task();
    const Teacher teacher = teacher_init(tiny_model(task), task, 3);
    const TaskBatch batch = task_batch(task, 11, 0, 2);
    TeacherRunOptions off, on;
    off.threads = on.threads = 1;
    on.sharpness = 0.7;
    on.own_block = 0.3;
    std::vector<double> g_off, g_on;
    teacher_gradients(teacher, batch, g_off, off);
    const TeacherResult r = teacher_gradients(teacher, batch, g_on, on);
    CHECK(r.entropy > 0);
    CHECK(r.entropy <= std::log(static_cast<double>(task.n)) + 1e-9);
    CHECK(r.own_block > 0);
    CHECK(r.objective == Approx(r.loss + 0.7 * r.entropy + 0.3 * r.own_block));
    const double eps = 1e-3;
    for (const ParamSlot& s : teacher_param_slots(teacher.config)) {
        DYNAMIC_SECTION("tensor " << s.name) {
            double err_term = 0, norm_term = 0, err_all = 0, norm_all = 0;
            for (int64_t t = 0; t < std::min<int64_t>(s.size(), 24); ++t) {
                const int64_t e = s.offset + (t * 7919) % s.size();
                Teacher plus = teacher, minus = teacher;
                plus.params[e] += eps;
                minus.params[e] -= eps;
                const TeacherResult rp = teacher_evaluate(plus, batch, on), rm = teacher_evaluate(minus, batch, on);
                const double fd_term = (0.7 * (rp.entropy - rm.entropy) + 0.3 * (rp.own_block - rm.own_block)) / (2 * eps);
                const double fd_all = (rp.objective - rm.objective) / (2 * eps);
                const double term = g_on[e] - g_off[e];
                err_term += (fd_term - term) * (fd_term - term);
                norm_term += fd_term * fd_term + term * term;
                err_all += (fd_all - g_on[e]) * (fd_all - g_on[e]);
                norm_all += fd_all * fd_all + g_on[e] * g_on[e];
            }
            INFO("term: relative error " << std::sqrt(err_term / std::max(norm_term, 1e-30)) << ", norm " << std::sqrt(norm_term));
            INFO("objective: relative error " << std::sqrt(err_all / std::max(norm_all, 1e-30)) << ", norm " << std::sqrt(norm_all));
            CHECK(std::sqrt(err_term) <= 1e-2 * std::sqrt(norm_term) + 2e-4);
            CHECK(std::sqrt(err_all) <= 1e-2 * std::sqrt(norm_all) + 2e-4);
            // Everything below the last layer's attention moves q or k, so gets a share of the term.
            const bool after_attention = s.name.rfind("layer1.wv", 0) == 0 || s.name.rfind("layer1.wo", 0) == 0 ||
                                         s.name.rfind("layer1.ln2", 0) == 0 || s.name.rfind("layer1.w1", 0) == 0 ||
                                         s.name.rfind("layer1.b1", 0) == 0 || s.name.rfind("layer1.w2", 0) == 0 ||
                                         s.name.rfind("layer1.b2", 0) == 0 || s.name.rfind("lnf", 0) == 0 ||
                                         s.name.rfind("w_out", 0) == 0 || s.name.rfind("b_out", 0) == 0;
            if (!after_attention) CHECK(norm_term > 1e-12);
        }
    }
    TeacherRunOptions bad = on;
    MaskSet dense = mask_set_dense(task.n, 16, 1, 2);
    bad.masks = &dense;
    CHECK_THROWS_WITH(teacher_evaluate(teacher, batch, bad), Catch::Contains("dense training only"));
    bad = on;
    bad.sharpness = -1;
    CHECK_THROWS_WITH(teacher_evaluate(teacher, batch, bad), Catch::Contains("sharpness = -1"));
    bad = on;
    bad.own_block = -1;
    CHECK_THROWS_WITH(teacher_evaluate(teacher, batch, bad), Catch::Contains("own_block = -1"));
}

TEST_CASE("teacher: same gradients for any thread count (1 to 5, bit for bit)", "[learn]") {
    // Each thread allocates its sequences' gradient buffers; under AVX-512, Eigen's sums written
    // through a map round differently with the buffer's alignment (the bias gradients first).
    const TaskConfig task = tiny_task();
    const Teacher teacher = teacher_init(tiny_model(task), task, 3);
    const TaskBatch batch = task_batch(task, 11, 0, 5);
    std::vector<double> g1;
    TeacherRunOptions one;
    one.threads = 1;
    teacher_gradients(teacher, batch, g1, one);
    for (int threads : {2, 3, 4, 5}) {
        INFO(threads << " threads");
        std::vector<double> g;
        TeacherRunOptions options;
        options.threads = threads;
        teacher_gradients(teacher, batch, g, options);
        CHECK(g == g1);
    }
}

TEST_CASE("teacher: training from a fixed seed lowers the loss by a factor of 2", "[learn][train]") {
    Teacher teacher = tiny_passkey_teacher();
    TrainOptions o;
    o.seed = 7;
    o.steps = 150;
    o.batch = 16;
    o.lr = 1e-2;
    o.warmup = 10;
    o.eval_every = 50;
    o.progress = false;
    const TrainReport r = teacher_train(teacher, o);
    INFO("first loss " << r.first_loss << ", last " << r.last_loss << ", held-out accuracy " << r.held_out_accuracy);
    CHECK(r.last_loss * 2 < r.first_loss);
}

TEST_CASE("teacher: once the task is learned, the sharpness term lowers the attention entropy by a factor of 2", "[learn][train]") {
    Teacher teacher = tiny_passkey_teacher();
    TrainOptions o;
    o.seed = 7;
    o.steps = 400;
    o.batch = 16;
    o.lr = 1e-2;
    o.warmup = 10;
    o.eval_every = 25;
    o.stop_accuracy = 0.5;
    o.sharpness = 0.2;
    o.sharpen_steps = 100;
    o.progress = false;
    const TrainReport r = teacher_train(teacher, o);
    INFO("sharpened from step " << r.sharpen_from << ", entropy " << r.first_entropy << " -> " << r.last_entropy << ", steps "
                                << r.steps << ", held-out accuracy " << r.held_out_accuracy);
    REQUIRE(r.sharpen_from >= 0);
    CHECK(teacher.config.sharpness == 0.2);
    CHECK(r.steps >= r.sharpen_from + 100);
    CHECK(r.last_entropy * 2 < r.first_entropy);
}

TEST_CASE("teacher: checkpoints round-trip and corrupt or truncated or foreign files are refused", "[learn]") {
    const TaskConfig task = tiny_task();
    const Teacher teacher = teacher_init(tiny_model(task), task, 3);
    const std::string path = temp_path("teacher.bin");
    teacher_save(teacher, path);
    const Teacher back = teacher_load(path);
    CHECK(back.params == teacher.params);
    CHECK(back.config.d == teacher.config.d);
    CHECK(back.task.n == task.n);
    Teacher sharp = teacher;
    sharp.config.sharpness = 0.05;
    sharp.config.own_block = 0.25;
    teacher_save(sharp, path);
    CHECK(teacher_load(path).config.sharpness == 0.05);
    CHECK(teacher_load(path).config.own_block == 0.25);
    teacher_save(teacher, path);

    std::vector<char> bytes;
    {
        std::ifstream in(path, std::ios::binary);
        bytes.assign(std::istreambuf_iterator<char>(in), {});
    }
    auto write = [&](const std::vector<char>& b) {
        std::ofstream out(path, std::ios::binary | std::ios::trunc);
        out.write(b.data(), static_cast<std::streamsize>(b.size()));
    };
    std::vector<char> flipped = bytes;
    flipped[flipped.size() / 2] ^= 0x10;
    write(flipped);
    CHECK_THROWS_WITH(teacher_load(path), Catch::Contains("checksum mismatch"));
    write(std::vector<char>(bytes.begin(), bytes.begin() + static_cast<std::ptrdiff_t>(bytes.size() / 3)));
    CHECK_THROWS_WITH(teacher_load(path), Catch::Contains("corrupt") || Catch::Contains("truncated"));
    write(std::vector<char>(bytes.begin(), bytes.begin() + 20));
    CHECK_THROWS_WITH(teacher_load(path), Catch::Contains("truncated"));
    write({'h', 'e', 'l', 'l', 'o', '!', '!', '!', '!'});
    CHECK_THROWS_WITH(teacher_load(path), Catch::Contains("not a sparsa teacher checkpoint"));
    std::filesystem::remove(path);
}

// [SECTION] the causal lab model (issue 16): grouped-query heads, head width 64, rotary, causal

namespace {

struct GradCase {
    const char* name;
    int64_t d, heads, head_width, kv_heads;
    bool causal;
    Positions positions;
};

// Relative error of the hand-written gradient against central differences of the loss, per tensor.
void check_gradients(const Teacher& teacher, const TaskBatch& batch) {
    std::vector<double> grads;
    TeacherRunOptions run;
    run.threads = 1;
    teacher_gradients(teacher, batch, grads, run);
    const double eps = 1e-3;
    for (const ParamSlot& s : teacher_param_slots(teacher.config)) {
        double err = 0, norm = 0;
        for (int64_t t = 0; t < std::min<int64_t>(s.size(), 16); ++t) {
            const int64_t e = s.offset + (t * 7919) % s.size();
            Teacher plus = teacher, minus = teacher;
            plus.params[e] += eps;
            minus.params[e] -= eps;
            const double fd = (teacher_evaluate(plus, batch, run).loss - teacher_evaluate(minus, batch, run).loss) / (2 * eps);
            err += (fd - grads[e]) * (fd - grads[e]);
            norm += fd * fd + grads[e] * grads[e];
        }
        INFO("tensor " << s.name << ": relative error " << std::sqrt(err / std::max(norm, 1e-30)) << ", gradient norm " << std::sqrt(norm));
        CHECK(std::sqrt(err) <= 1e-2 * std::sqrt(norm) + 2e-4);
        CHECK(norm > 0);
    }
}

} // namespace

TEST_CASE("teacher: gradients match central differences with rotary, grouped-query heads, head width 64, causal or not", "[learn][grad]") {
    const GradCase cases[] = {
        {"causal, rotary, 4 heads sharing 2 key/value heads", 16, 4, 0, 2, true, Positions::rotary},
        {"causal, rotary, 2 heads of width 64 sharing 1 key/value head", 16, 2, 64, 1, true, Positions::rotary},
        {"causal, no positions, 2 heads of width 64", 16, 2, 64, 0, true, Positions::none},
        {"causal, sinusoidal, 2 heads", 16, 2, 0, 0, true, Positions::sinusoidal},
        {"bidirectional, rotary, 4 heads sharing 1 key/value head", 16, 4, 0, 1, false, Positions::rotary},
    };
    TaskConfig task = tiny_task();
    task.kind = TaskKind::mqar;
    const TaskBatch batch = task_batch(task, 11, 0, 2);
    for (const GradCase& g : cases) {
        DYNAMIC_SECTION(g.name) {
            TeacherConfig c = tiny_model(task);
            c.d = g.d;
            c.heads = g.heads;
            c.head_width = g.head_width;
            c.kv_heads = g.kv_heads;
            c.causal = g.causal;
            c.positions = g.positions;
            check_gradients(teacher_init(c, task, 5), batch);
        }
    }
}

TEST_CASE("teacher: a causal teacher's outputs before a position do not depend on tokens after it", "[learn]") {
    TaskConfig task = tiny_task();
    task.kind = TaskKind::mqar;
    for (bool causal : {true, false}) {
        TeacherConfig c = tiny_model(task);
        c.causal = causal;
        c.kv_heads = 1;
        const Teacher teacher = teacher_init(c, task, 5);
        TaskBatch a = task_batch(task, 11, 0, 1), b = a;
        const int64_t cut = 20;
        for (int64_t i = cut; i < task.n; ++i) b.tokens[i] = static_cast<int32_t>((b.tokens[i] + 1) % task.vocab());
        TeacherCapture ca, cb;
        TeacherRunOptions run;
        run.threads = 1;
        run.capture = &ca;
        teacher_evaluate(teacher, a, run);
        run.capture = &cb;
        teacher_evaluate(teacher, b, run);
        double before = 0;   // largest change of the last layer's attention output before the cut
        const Tensor& oa = ca.o[0][1];
        const Tensor& ob = cb.o[0][1];
        for (int64_t h = 0; h < c.heads; ++h)
            for (int64_t i = 0; i < cut; ++i)
                for (int64_t j = 0; j < c.head_dim(); ++j) before = std::max(before, static_cast<double>(std::abs(oa.at(0, h, i, j) - ob.at(0, h, i, j))));
        INFO((causal ? "causal" : "bidirectional") << ": largest change before the cut " << before);
        if (causal) CHECK(before == 0.0);
        else CHECK(before > 1e-4);
    }
}

TEST_CASE("teacher: sparse masks are cut to their causal part in a causal teacher", "[learn]") {
    TaskConfig task = tiny_task();
    task.kind = TaskKind::mqar;
    const Teacher teacher = teacher_init(tiny_model(task), task, 5);
    const TaskBatch batch = task_batch(task, 11, 0, 2);
    TeacherRunOptions dense_run, full_run;
    dense_run.threads = full_run.threads = 1;
    // A bidirectional dense mask given to a causal teacher gives the causal teacher's results.
    const MaskSet full = mask_set_dense(task.n, 16, 1, 2);
    full_run.masks = &full;
    const TeacherResult a = teacher_evaluate(teacher, batch, dense_run), b = teacher_evaluate(teacher, batch, full_run);
    CHECK(a.loss == Approx(b.loss).epsilon(1e-6));
    CHECK(a.hits == b.hits);
}

TEST_CASE("teacher: an attention replacement runs in place of every layer's attention, for evaluation only", "[learn]") {
    TaskConfig task = tiny_task();
    task.kind = TaskKind::mqar;
    const Teacher teacher = teacher_init(tiny_model(task), task, 5);
    const TaskBatch batch = task_batch(task, 11, 0, 2);
    TeacherRunOptions dense_run, replaced;
    dense_run.threads = replaced.threads = 1;
    // the replacement gives the causal attention itself: the same results as the plain run
    const MaskSet causal = mask_set_causal(task.n, 16, 1, teacher.config.heads);
    int64_t calls = 0;
    std::vector<int64_t> layers;
    replaced.attention = [&](int64_t layer, const Tensor& q, const Tensor& k, const Tensor& v) {
        ++calls;
        layers.push_back(layer);
        return attention_forward(q, k, v, causal, 0).o;
    };
    const TeacherResult a = teacher_evaluate(teacher, batch, dense_run), b = teacher_evaluate(teacher, batch, replaced);
    CHECK(calls == batch.batch * teacher.config.layers);
    CHECK(std::count(layers.begin(), layers.end(), int64_t{0}) == batch.batch);
    CHECK(a.loss == Approx(b.loss).epsilon(1e-9));
    CHECK(a.hits == b.hits);
    // one that zeroes the attention changes the loss: the replacement is what the layers use
    TeacherRunOptions zero = replaced;
    zero.attention = [](int64_t, const Tensor& q, const Tensor&, const Tensor&) { return tensor_zeros<float>(q.shape); };
    CHECK(teacher_evaluate(teacher, batch, zero).loss != Approx(a.loss).epsilon(1e-6));
    // evaluation only, and O must have q's shape
    std::vector<double> grads;
    CHECK_THROWS_WITH(teacher_gradients(teacher, batch, grads, replaced), Catch::Matchers::Contains("evaluation only"));
    TeacherCapture capture;
    TeacherRunOptions captured = replaced;
    captured.capture = &capture;
    CHECK_THROWS_WITH(teacher_evaluate(teacher, batch, captured), Catch::Matchers::Contains("evaluation only"));
    TeacherRunOptions wrong = replaced;
    wrong.attention = [](int64_t, const Tensor&, const Tensor&, const Tensor&) { return tensor_zeros<float>({1, 1, 3, 4}); };
    CHECK_THROWS_WITH(teacher_evaluate(teacher, batch, wrong), Catch::Matchers::Contains("another shape than q"));
}

TEST_CASE("teacher: version 1 checkpoints (the first, bidirectional teacher) still load; other versions are refused by number", "[learn]") {
    // A version 1 file as the first teacher wrote it: its header has no head_width, kv_heads,
    // causal, positions or needles.
    TaskConfig task = tiny_task();
    TeacherConfig c = tiny_model(task);
    c.causal = false;
    c.positions = Positions::sinusoidal;
    const Teacher old = teacher_init(c, task, 3);
    const std::string header = R"({"format":"sparsa.teacher","version":1,"model":{"vocab":)" + std::to_string(c.vocab) +
                               R"(,"d":8,"heads":2,"layers":2,"mlp":12,"sharpness":0.0,"own_block":1.0},"task":{"kind":"mix","n":32,"pairs":3,"queries":3,"keys":4,"values":4,"fillers":3}})";
    auto file_bytes = [&](uint32_t version) {
        std::vector<uint8_t> bytes;
        auto put = [&](const void* p, size_t size) {
            const size_t at = bytes.size();
            bytes.resize(at + size);
            std::memcpy(bytes.data() + at, p, size);
        };
        put("SPTEACH\n", 8);
        const uint32_t size = static_cast<uint32_t>(header.size());
        const uint64_t count = old.params.size();
        put(&version, 4);
        put(&size, 4);
        put(header.data(), header.size());
        put(&count, 8);
        put(old.params.data(), old.params.size() * sizeof(double));
        uint64_t h = 0xcbf29ce484222325ULL;   // FNV-1a 64 of everything before it
        for (uint8_t byte : bytes) {
            h ^= byte;
            h *= 0x100000001b3ULL;
        }
        put(&h, 8);
        return bytes;
    };
    const std::string path = temp_path("teacher_v1.bin");
    auto write = [&](const std::vector<uint8_t>& b) {
        std::ofstream out(path, std::ios::binary | std::ios::trunc);
        out.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
    };
    write(file_bytes(1));
    const Teacher back = teacher_load(path);
    CHECK_FALSE(back.config.causal);
    CHECK(back.config.positions == Positions::sinusoidal);
    CHECK(back.config.head_dim() == 4);
    CHECK(back.config.kv_head_count() == 2);
    CHECK(back.config.own_block == 1.0);
    CHECK(back.params == old.params);
    const TaskBatch batch = task_batch(task, 11, 0, 2);
    CHECK(teacher_evaluate(back, batch).loss == teacher_evaluate(old, batch).loss);
    write(file_bytes(3));
    CHECK_THROWS_WITH(teacher_load(path), Catch::Contains("checkpoint version 3 is not one this sparsa reads (1 to 2)"));
    write(file_bytes(0));
    CHECK_THROWS_WITH(teacher_load(path), Catch::Contains("checkpoint version 0"));
    // Version 2 keeps every new field.
    TeacherConfig g = tiny_model(task);
    g.heads = 4;
    g.head_width = 64;
    g.kv_heads = 2;
    g.positions = Positions::none;
    task.needles = 3;
    Teacher t = teacher_init(g, task, 3);
    t.config.own_block = 0.5;
    teacher_save(t, path);
    const Teacher v2 = teacher_load(path);
    CHECK(v2.config.head_dim() == 64);
    CHECK(v2.config.kv_head_count() == 2);
    CHECK(v2.config.causal);
    CHECK(v2.config.positions == Positions::none);
    CHECK(v2.config.own_block == 0.5);
    CHECK(v2.task.needles == 3);
    CHECK(v2.params == t.params);
    std::filesystem::remove(path);
}

TEST_CASE("teacher: shapes the model cannot have are refused naming the field", "[learn]") {
    const TaskConfig task = tiny_task();
    TeacherConfig c = tiny_model(task);
    c.kv_heads = 3;
    CHECK_THROWS_WITH(teacher_init(c, task, 1), Catch::Contains("kv_heads = 3 must divide heads = 2"));
    c = tiny_model(task);
    c.head_width = 5;
    c.positions = Positions::rotary;   // an odd width is refused only where rotary turns pairs
    CHECK_THROWS_WITH(teacher_init(c, task, 1), Catch::Contains("must be even"));
    c.head_width = 300;
    CHECK_THROWS_WITH(teacher_init(c, task, 1), Catch::Contains("head_width = 300"));
    CHECK_THROWS_WITH(positions_parse("alibi"), Catch::Contains("use rotary, none or sinusoidal"));
}

// [SECTION] RULER-style tasks and the three streams

TEST_CASE("tasks: every needle task asks for what its haystack holds, at balanced depths", "[learn]") {
    for (int64_t n : {1024, 4096}) {
        TaskConfig t;
        t.kind = TaskKind::ruler;
        t.n = n;
        const int64_t count = 100;   // 20 of each kind, every depth bucket twice per kind
        const TaskBatch a = task_batch(t, 9, 0, count);
        std::map<std::pair<int, int>, int64_t> per_depth;   // (kind, depth) -> answers of the depth-setting needle
        for (int64_t s = 0; s < count; ++s) {
            const TaskKind kind = static_cast<TaskKind>(a.kind[s]);
            const int32_t* tok = a.tokens.data() + s * n;
            const int32_t* tgt = a.targets.data() + s * n;
            const int8_t* dep = a.depth.data() + s * n;
            int64_t answers = 0, marks = 0;
            for (int64_t i = 0; i < n; ++i) marks += tok[i] == t.mark_token() ? 1 : 0;
            const int64_t m = kind == TaskKind::single ? 1 : t.needles;
            if (kind != TaskKind::mqar) CHECK(marks == m);
            for (int64_t i = 0; i < n; ++i) {
                if (tgt[i] < 0) {
                    CHECK(dep[i] == -1);
                    continue;
                }
                ++answers;
                REQUIRE(dep[i] >= 0);
                REQUIRE(dep[i] < kDepths);
                if (kind == TaskKind::mqar) continue;
                // The answer is the value of a needle `MARK key value` lying in the answer's depth slice.
                const int64_t h = n - ruler_query_length(t, kind);
                bool found = false;
                for (int64_t j = 0; j + 2 < h; ++j)
                    if (tok[j] == t.mark_token() && tok[j + 2] == tgt[i] && j >= dep[i] * h / kDepths && j < (dep[i] + 1) * h / kDepths) {
                        found = true;
                        if (kind != TaskKind::multivalue) CHECK(tok[j + 1] == tok[i]);   // asked by its key
                    }
                CHECK(found);
            }
            CHECK(answers == (kind == TaskKind::mqar ? t.queries : kind == TaskKind::single || kind == TaskKind::multikey ? 1 : m));
            // The depth-setting answer (the first needle's) cycles through the buckets with the index.
            const int64_t bucket = (s / 5) % kDepths;
            bool has_bucket = false;
            for (int64_t i = 0; i < n; ++i) has_bucket = has_bucket || (tgt[i] >= 0 && dep[i] == bucket);
            if (kind != TaskKind::mqar) CHECK(has_bucket);
            per_depth[{static_cast<int>(kind), static_cast<int>(bucket)}] += 1;
        }
        for (const auto& [key, c] : per_depth) CHECK(c == 2);
    }
    TaskConfig bad;
    bad.kind = TaskKind::multiquery;
    bad.needles = 11;
    CHECK_THROWS_WITH(task_batch(bad, 1, 0, 1), Catch::Contains("needles = 11"));
    bad.needles = 4;
    bad.n = 32;
    CHECK_THROWS_WITH(task_batch(bad, 1, 0, 1), Catch::Contains("haystack of 24 tokens"));
    CHECK_THROWS_WITH(task_kind_parse("needle"), Catch::Contains("multiquery or ruler"));
}

TEST_CASE("tasks: training, validation and test streams never share a sequence (hashed)", "[learn]") {
    // Sequences of each stream hashed whole (FNV-1a 64 of the tokens); a hash met in two streams,
    // or twice in one, fails. Three training seeds, as a run of three seeds trains on.
    auto hash = [](const int32_t* tokens, int64_t n) {
        uint64_t h = 0xcbf29ce484222325ULL;
        for (int64_t i = 0; i < n; ++i) {
            h ^= static_cast<uint32_t>(tokens[i]);
            h *= 0x100000001b3ULL;
        }
        return h;
    };
    for (const auto& [n, count] : {std::pair<int64_t, int64_t>{1024, 2000}, {4096, 500}, {16384, 100}}) {
        TaskConfig t;
        t.kind = TaskKind::ruler;
        t.n = n;
        std::map<uint64_t, std::string> seen;
        int64_t clashes = 0;
        auto add = [&](TaskStream stream, uint64_t seed, int64_t first) {
            const TaskBatch b = task_batch(t, task_stream_seed(stream, seed), first, count);
            const std::string name = task_stream_name(stream) + " " + std::to_string(seed);
            for (int64_t s = 0; s < count; ++s)
                if (!seen.emplace(hash(b.tokens.data() + s * n, n), name).second) ++clashes;
        };
        for (uint64_t seed : {1, 2, 3}) add(TaskStream::train, seed, 0);
        add(TaskStream::train, 1, int64_t{1} << 40);   // the calibration part of the training stream
        add(TaskStream::validation, 1, 0);
        add(TaskStream::test, 1, 0);
        INFO("n = " << n);
        CHECK(clashes == 0);
        CHECK(seen.size() == static_cast<size_t>(6 * count));
    }
    // Validation and test do not follow the training seed; a training seed equal to either is refused.
    CHECK(task_stream_seed(TaskStream::test, 1) == task_stream_seed(TaskStream::test, 2));
    CHECK(task_stream_seed(TaskStream::validation, 1) != task_stream_seed(TaskStream::test, 1));
    CHECK_THROWS_WITH(task_stream_seed(TaskStream::train, task_stream_seed(TaskStream::test, 1)), Catch::Contains("test stream's seed"));
}

TEST_CASE("tasks: scores group answers by task and depth", "[learn]") {
    TaskConfig t;
    t.kind = TaskKind::ruler;
    t.n = 1024;
    const TaskBatch b = task_batch(t, 4, 0, 10);
    std::vector<int8_t> hits(b.targets.size(), -1);
    for (size_t i = 0; i < hits.size(); ++i)
        if (b.targets[i] >= 0) hits[i] = b.kind[i / static_cast<size_t>(t.n)] == static_cast<uint8_t>(TaskKind::single) ? 1 : 0;
    TaskScores s;
    s.add(b, hits);
    const auto& kinds = task_kinds_single();
    for (size_t k = 0; k < kinds.size(); ++k) {
        INFO(task_kind_name(kinds[k]));
        if (kinds[k] == TaskKind::passkey) CHECK(s.kind_answers(k) == 0);
        else CHECK(s.kind_answers(k) > 0);
        if (s.kind_answers(k) > 0) CHECK(s.kind_accuracy(k) == (kinds[k] == TaskKind::single ? 1.0 : 0.0));
    }
    CHECK(s.total_answers() == 2 * (1 + 1 + 4 + 4 + 8));
}
