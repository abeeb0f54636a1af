// The operator page follows the node: every few seconds it fetches /live (the page's live
// part, server-rendered) and swaps it in when it changed. Without JavaScript a meta refresh in
// <noscript> reloads the whole page instead. A 401 (the session ended) reloads the page, which
// leads to the login form.
"use strict";
(function () {
  const live = document.getElementById("live");
  if (!live) {
    return;
  }
  const every = Math.max(1, Number(live.dataset.every) || 3) * 1000;
  let shown = live.innerHTML;

  async function follow() {
    try {
      const answer = await fetch(live.dataset.src, {
        credentials: "same-origin", cache: "no-store", redirect: "error",
        headers: {"Accept": "text/html"},
      });
      if (answer.status === 401) {
        window.location.reload();
        return;
      }
      if (answer.ok) {
        const html = await answer.text();
        if (html !== shown) {
          live.innerHTML = html;
          shown = html;
        }
      }
    } catch (error) {
      // the node is restarting or the network is away: try again at the next turn
    }
    window.setTimeout(follow, every);
  }

  window.setTimeout(follow, every);
})();
