"""Chapter 8's reinforcement learning: the Catch environment (Gymnasium's checker and the
rules by hand), the replay buffer, DQN's targets worked out independently, and DQN learning
to catch."""
import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import shendu
from shendu import models, nn, rl


def test_catch_passes_gymnasiums_checks_and_is_registered():
    check_env(gymnasium.make("shendu/Catch-v0").unwrapped, skip_render_check=False)
    env = gymnasium.make("shendu/Catch-v0", rows=6, columns=4)
    state, _ = env.reset(seed=0)
    assert state.shape == (1, 6, 4) and state.dtype == np.float32 and state.sum() == 2


@pytest.mark.parametrize("seed", range(4))
def test_the_ball_falls_a_row_a_step_and_ends_with_plus_or_minus_one(seed):
    env = rl.Catch(rows=5, columns=3)
    state, _ = env.reset(seed=seed)
    column = int(np.argmax(state[0, 0]))  # where the ball starts
    paddle = 1  # the middle column
    for step in range(1, 5):
        action = int(np.sign(column - paddle)) + 1  # towards the ball
        paddle = min(max(paddle + action - 1, 0), 2)
        state, reward, ended, truncated, _ = env.step(action)
        assert state[0, step, column] == 1 and state[0, 4, paddle] == 1
        assert ended == (step == 4) and not truncated
    assert reward == 1.0
    env.reset(seed=seed)
    away = 0 if column == 2 else 2  # the side far from the ball, for every step
    rewards = [env.step(away)[1] for _ in range(4)]
    assert rewards == [0.0, 0.0, 0.0, -1.0]
    with pytest.raises(shendu.ShenduError, match="0 \\(left\\)"):
        env.step(3)


def test_replay_keeps_the_last_transitions_and_samples_them_whole():
    replay = rl.Replay(3, (2,))
    for i in range(5):
        replay.add(np.full(2, i), i, 10 * i, np.full(2, i + 1), i == 4)
    assert replay.size == 3 and sorted(replay.actions) == [2, 3, 4]
    states, actions, rewards, next_states, ended = replay.sample(50, np.random.default_rng(0))
    assert set(actions) == {2, 3, 4}
    np.testing.assert_array_equal(states[:, 0], actions)
    np.testing.assert_array_equal(rewards, 10 * actions)
    np.testing.assert_array_equal(next_states[:, 1], actions + 1)
    np.testing.assert_array_equal(ended, actions == 4)


class Recording(nn.HuberLoss):
    def forward(self, prediction, target):
        self.seen = (np.array(prediction), np.array(target))
        return super().forward(prediction, target)


def by_hand(network, x):
    """An MLP Q-network's outputs, layer by layer in float64."""
    h = x.astype(np.float64)
    layers = [layer for layer in network if hasattr(layer, "weight")]
    for k, layer in enumerate(layers):
        h = h @ layer.weight.data.T + layer.bias.data
        h = np.maximum(h, 0) if k < len(layers) - 1 else h
    return h


@pytest.mark.parametrize("double", [False, True])
def test_dqn_moves_the_taken_actions_q_towards_its_target(double):
    """r + γ max_a' Q̂(s', a'), or with double r + γ Q̂(s', argmax_a' Q(s', a')); r alone
    where the episode ended."""
    shendu.manual_seed(0)
    network = models.get("qnet", num_classes=3, input_shape=(4,), hidden=8)
    target = models.get("qnet", num_classes=3, input_shape=(4,), hidden=8)  # other weights
    rng = np.random.default_rng(1)
    states, next_states = rng.random((5, 4), np.float32), rng.random((5, 4), np.float32)
    actions, rewards = np.array([0, 2, 1, 1, 0]), np.array([1, 0, -1, 0.5, 0], np.float32)
    ended = np.array([0, 1, 0, 0, 1], np.float32)
    q_next, rows = by_hand(target, next_states), np.arange(5)
    value = q_next[rows, by_hand(network, next_states).argmax(axis=1)] if double else \
        q_next.max(axis=1)
    if double:
        assert (value != q_next.max(axis=1)).any()  # the case tells them apart
    expected = rewards + 0.9 * (1 - ended) * value
    with nn.no_grad():
        q = network(states)
    loss, opt = Recording(), shendu.optim.SGD(network.parameters(), lr=0.1)
    rl.DQN(gamma=0.9, double=double)._learn(network, target, opt, loss,
                                            (states, actions, rewards, next_states, ended))
    seen_q, wanted = loss.seen
    np.testing.assert_allclose(seen_q, q, rtol=1e-6)
    np.testing.assert_allclose(wanted[rows, actions], expected, rtol=1e-5, atol=1e-6)
    others = np.ones_like(q, bool)
    others[rows, actions] = False
    np.testing.assert_array_equal(wanted[others], q[others])  # no error, no gradient there


def test_epsilon_falls_linearly_then_stays():
    dqn = rl.DQN(steps=1000, explore=0.5, epsilon_end=0.1)
    assert [dqn.epsilon(s) for s in (0, 250, 500, 900)] == pytest.approx([1, 0.55, 0.1, 0.1])


def test_dqn_learns_to_catch():
    shendu.manual_seed(0)
    env = gymnasium.make("shendu/Catch-v0")
    network = models.get("qnet")
    returns = rl.DQN(steps=3000, warmup=200, target_every=200).fit(env, network, seed=0)
    assert np.mean(returns[:50]) < 0  # at random, mostly missed
    won = np.mean(np.array(rl.play(env, network, 100, seed=1000)) > 0)
    assert won >= 0.9
