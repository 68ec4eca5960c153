// The Jupyter widget manager typesets widget labels with MathJax 2's API,
// MathJax.Hub.Queue(["Typeset", MathJax.Hub, element]); the book loads MathJax 3, which has no
// Hub, so every labelled widget would throw. This gives whatever object window.MathJax holds (the
// configuration first, MathJax 3 itself once loaded) a hidden Hub whose Queue hands the element
// to MathJax 3's typesetPromise, or does nothing before MathJax 3 has started (it typesets the
// whole page when it starts).
(function () {
  var hub = {
    Queue: function (job) {
      var mathjax = window.MathJax;
      if (mathjax && typeof mathjax.typesetPromise === "function") {
        var element = job && job[2];
        mathjax.typesetPromise(element ? [element] : undefined).catch(function () {});
      }
    },
  };
  function withHub(mathjax) {
    if (mathjax && typeof mathjax === "object" && !("Hub" in mathjax)) {
      Object.defineProperty(mathjax, "Hub", { value: hub, enumerable: false });
    }
    return mathjax;
  }
  var current = withHub(window.MathJax || {});
  try {
    Object.defineProperty(window, "MathJax", {
      configurable: true,
      get: function () { return current; },
      set: function (value) { current = withHub(value); },
    });
  } catch (e) {
    window.MathJax = current;
  }
})();
