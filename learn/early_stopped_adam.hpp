// Adam with early stopping on a validation loss, for one vector of parameters: how the small
// learned selectors (the pooled gate, one head at a time; the indexer, one layer at a time) are
// trained. One copy of the loop both use.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace sparsa::learn {

struct EarlyStoppedAdamOptions {
    int64_t steps = 400;
    double lr = 1e-2;
    int64_t eval_every = 10;   // validation every this many steps and after the last (at least 1)
    int64_t patience = 5;      // stop after this many validations without a new best
};

struct EarlyStoppedAdamReport {
    double first_train = 0, last_train = 0, first_validation = 0, best_validation = 0;
    int64_t steps = 0, best_step = 0;   // steps run; the step of the best validation loss (0: the initial parameters)
};

// Adam (0.9, 0.999, 1e-8, bias-corrected) on w[0 .. P) from train_loss(grad), which returns the
// training loss and adds its gradient into grad (zeroed before each call), with validation_loss()
// checked every eval_every steps; w ends at the parameters of the best validation loss (the
// initial ones when none was better).
template <typename TrainLoss, typename ValidationLoss>
EarlyStoppedAdamReport early_stopped_adam(double* w, int64_t P, const TrainLoss& train_loss, const ValidationLoss& validation_loss,
                                          const EarlyStoppedAdamOptions& o) {
    EarlyStoppedAdamReport rep;
    const int64_t eval_every = std::max<int64_t>(1, o.eval_every);
    std::vector<double> m(static_cast<size_t>(P), 0.0), v(m), grad(m), best(w, w + P);
    rep.best_validation = rep.first_validation = validation_loss();
    int64_t since_best = 0;
    for (int64_t step = 0; step < o.steps; ++step) {
        std::fill(grad.begin(), grad.end(), 0.0);
        const double loss = train_loss(grad.data());
        if (step == 0) rep.first_train = loss;
        rep.last_train = loss;
        rep.steps = step + 1;
        const double c1 = 1 - std::pow(0.9, static_cast<double>(step + 1)), c2 = 1 - std::pow(0.999, static_cast<double>(step + 1));
        for (int64_t e = 0; e < P; ++e) {
            m[e] = 0.9 * m[e] + 0.1 * grad[e];
            v[e] = 0.999 * v[e] + 0.001 * grad[e] * grad[e];
            w[e] -= o.lr * (m[e] / c1) / (std::sqrt(v[e] / c2) + 1e-8);
        }
        if ((step + 1) % eval_every != 0 && step + 1 != o.steps) continue;
        const double loss_v = validation_loss();
        if (loss_v < rep.best_validation) {
            rep.best_validation = loss_v;
            rep.best_step = step + 1;
            std::copy(w, w + P, best.begin());
            since_best = 0;
        } else if (++since_best >= o.patience) {
            break;
        }
    }
    std::copy(best.begin(), best.end(), w);
    return rep;
}

} // namespace sparsa::learn
