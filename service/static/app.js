// Countdowns to approval expiry: the server renders the seconds left (from its own clock); this
// only ticks them down. Without JavaScript the page still shows the value it was served with.
(function () {
  "use strict";
  var started = Date.now();
  function tick() {
    var nodes = document.querySelectorAll("[data-seconds-left]");
    var elapsed = Math.floor((Date.now() - started) / 1000);
    for (var i = 0; i < nodes.length; i++) {
      var left = parseInt(nodes[i].getAttribute("data-seconds-left"), 10) - elapsed;
      if (left <= 0) { nodes[i].textContent = "expired"; nodes[i].classList.add("soon"); continue; }
      var s = left % 60;
      nodes[i].textContent = Math.floor(left / 60) + "m " + (s < 10 ? "0" : "") + s + "s left";
      if (left <= 300) nodes[i].classList.add("soon");
    }
  }
  document.addEventListener("DOMContentLoaded", function () { tick(); setInterval(tick, 1000); });
})();
