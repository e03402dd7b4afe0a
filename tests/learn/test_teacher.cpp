// The teacher: gradients of every parameter tensor against central finite differences (the model
// in double, attention through the CPU engine in float), learning from a fixed seed, tasks,
// checkpoints (round trip, corrupt and truncated files refused).
#include "learn/teacher.hpp"

#include "engine/error.hpp"

#include <catch2/catch.hpp>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>

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
