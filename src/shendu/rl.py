"""Learning to play (chapter 8): deep Q-learning (DQN, Mnih et al. 2015) on Gymnasium
environments, and Catch, a small pixel game registered with Gymnasium as "shendu/Catch-v0".

A Q-network reads a state and outputs Q(s, a), the return it expects from taking action a in
s and playing well after. DQN learns it from its own play, moving Q(s, a) towards the target
r + γ max_a' Q̂(s', a') (r alone when the episode ended) with three ideas:

- experience replay: transitions (s, a, r, s', ended) go into a buffer, and each step learns
  from a random batch of them, not from the last few, which are strongly correlated;
- a target network Q̂, a copy of the Q-network refreshed every `target_every` steps, so that
  the target does not move with every step that chases it;
- ε-greedy play: a random action with probability ε (from 1 down to `epsilon_end` over the
  first `explore` of the steps), else the action of the largest Q.

The loss is Huber's (squared error near the target, absolute far from it), as the paper's
error clipping."""
import copy
from dataclasses import dataclass

import gymnasium
import numpy as np

from . import kernels, nn, optim
from .errors import ShenduError
from .train import inference


class Catch(gymnasium.Env):
    """bsuite's Catch (Osband et al. 2020): a ball falls from a random column of the top row of
    a rows × columns board, one row per step; the agent moves the paddle on the bottom row left
    (action 0), not (1) or right (2). When the ball reaches the bottom row the episode ends with
    reward +1 if the paddle is under it, else −1. Observations: the board as a float32 image
    (1, rows, columns), ball and paddle 1, the rest 0."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 4}

    def __init__(self, rows=10, columns=5, render_mode=None):
        self.rows, self.columns, self.render_mode = rows, columns, render_mode
        self.observation_space = gymnasium.spaces.Box(0, 1, (1, rows, columns), np.float32)
        self.action_space = gymnasium.spaces.Discrete(3)

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.ball = [0, int(self.np_random.integers(self.columns))]
        self.paddle = self.columns // 2
        return self._board(), {}

    def step(self, action):
        if not self.action_space.contains(action):
            raise ShenduError(f"Catch's actions are 0 (left), 1 (stay) and 2 (right), got "
                              f"{action!r}")
        self.paddle = min(max(self.paddle + int(action) - 1, 0), self.columns - 1)
        self.ball[0] += 1
        ended = self.ball[0] == self.rows - 1
        reward = (1.0 if self.ball[1] == self.paddle else -1.0) if ended else 0.0
        return self._board(), reward, ended, False, {}

    def _board(self):
        board = np.zeros((1, self.rows, self.columns), np.float32)
        board[0, self.ball[0], self.ball[1]] = 1
        board[0, self.rows - 1, self.paddle] = 1
        return board

    def render(self):
        return (np.repeat(self._board()[0, :, :, None], 3, axis=2) * 255).astype(np.uint8)


gymnasium.register("shendu/Catch-v0", entry_point=Catch)


class Replay:
    """The last `capacity` transitions (s, a, r, s', ended), sampled uniformly."""

    def __init__(self, capacity, state_shape):
        self.states = np.zeros((capacity, *state_shape), np.float32)
        self.next_states = np.zeros_like(self.states)
        self.actions = np.zeros(capacity, np.int64)
        self.rewards = np.zeros(capacity, np.float32)
        self.ended = np.zeros(capacity, np.float32)
        self.size = self.next = 0

    def add(self, state, action, reward, next_state, ended):
        i = self.next
        self.states[i], self.actions[i], self.rewards[i] = state, action, reward
        self.next_states[i], self.ended[i] = next_state, ended
        self.next, self.size = (i + 1) % len(self.states), min(self.size + 1, len(self.states))

    def sample(self, n, rng):
        i = rng.integers(self.size, size=n)
        return (self.states[i], self.actions[i], self.rewards[i], self.next_states[i],
                self.ended[i])


@dataclass(frozen=True)
class DQN:
    """DQN's settings: `steps` of play in all, learning from a batch of `batch_size`
    transitions every `learn_every` steps once the buffer holds `warmup`; Adam at lr; the
    target network refreshed every `target_every` steps; ε from 1 to epsilon_end over the
    first `explore` of the steps; rewards discounted by gamma. With `double`, Double DQN
    (van Hasselt et al. 2016): the target values the action the online network prefers,
    r + γ Q̂(s', argmax_a' Q(s', a')), which curbs max's overestimate of noisy Q values."""
    steps: int = 20000
    batch_size: int = 32
    lr: float = 1e-3
    gamma: float = 0.99
    buffer: int = 10000
    warmup: int = 500
    learn_every: int = 1
    target_every: int = 500
    epsilon_end: float = 0.05
    explore: float = 0.5
    huber_delta: float = 1.0
    double: bool = False

    def epsilon(self, step):
        return max(self.epsilon_end, 1 - (1 - self.epsilon_end) * step / (self.explore
                                                                            * self.steps))

    def fit(self, env, network, seed=0):
        """Train `network` (a Q-network for env's observations and actions) by playing env.
        Returns the return of each episode played (a list)."""
        rng = np.random.default_rng(seed)
        target = copy.deepcopy(network)
        opt = optim.Adam(network.parameters(), lr=self.lr)
        loss = nn.HuberLoss(self.huber_delta)
        replay = Replay(self.buffer, env.observation_space.shape)
        state, _ = env.reset(seed=seed)
        returns, returned = [], 0.0
        for step in range(self.steps):
            action = (int(rng.integers(env.action_space.n)) if rng.random() < self.epsilon(step)
                      else greedy(network, state[None])[0])
            next_state, reward, ended, truncated, _ = env.step(action)
            replay.add(state, action, reward, next_state, ended)
            returned += reward
            state = next_state
            if ended or truncated:
                returns.append(returned)
                state, _ = env.reset()
                returned = 0.0
            if replay.size >= self.warmup and step % self.learn_every == 0:
                self._learn(network, target, opt, loss, replay.sample(self.batch_size, rng))
            if step % self.target_every == 0:
                target.load_state_dict(network.state_dict())
        return returns

    def _learn(self, network, target, opt, loss, batch):
        states, actions, rewards, next_states, ended = batch
        K, rows = nn.device_of(network), np.arange(len(actions))
        if self.double:  # the online network picks the next action, the target values it
            picked = greedy(network, next_states)
        with inference(target):
            q_next = kernels.to_host(target(K.array(next_states)))
        best_next = (q_next[rows, picked] if self.double else q_next.max(axis=1))
        q = network(K.array(states))
        wanted = kernels.to_host(q).copy()  # the other actions' errors stay zero
        wanted[rows, actions] = rewards + self.gamma * (1 - ended) * best_next
        loss(q, K.array(wanted))
        network.zero_grad()
        network.backward(loss.backward(), input_grad=False)
        opt.step()


def greedy(network, states):
    """The action of the largest Q for each of the states (N, ...)."""
    with inference(network):
        return kernels.to_host(network(nn.device_of(network).array(
            np.asarray(states, np.float32)))).argmax(axis=1)


def play(env, network, episodes=100, seed=0):
    """The return of each of `episodes` played greedily by the network, the first seeded."""
    returns = []
    for episode in range(episodes):
        state, _ = env.reset(seed=seed + episode)
        returned, done = 0.0, False
        while not done:
            state, reward, ended, truncated, _ = env.step(int(greedy(network, state[None])[0]))
            returned += reward
            done = ended or truncated
        returns.append(returned)
    return returns
