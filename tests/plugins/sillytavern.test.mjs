// The SillyTavern extension against a small fake of SillyTavern's extension API (node --test tests/plugins/).
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import test from 'node:test';

import {
    applyAlpha, connectedUrl, currentApiType, currentModel, describeMembers, init, loadSettings, MODULE, serverRoot,
    serverUrl,
} from '../../plugins/sillytavern/index.js';

const EXT = new URL('../../plugins/sillytavern/', import.meta.url);

function fakeEventSource() {
    const handlers = {};
    return {
        handlers,
        on(name, fn) { (handlers[name] ??= []).push(fn); },
        async emit(name, ...args) { for (const fn of handlers[name] ?? []) await fn(...args); },
    };
}

// A jQuery stand-in: one element object per selector, recording text/val/prop and handlers.
function fakeJQuery() {
    const elements = {};
    const $ = (sel) => {
        if (typeof sel === 'function') return sel();
        if (typeof sel === 'object') return sel;
        return (elements[sel] ??= {
            _text: '', _val: undefined, _props: {}, _on: {}, _html: '',
            text(t) { if (t === undefined) return this._text; this._text = String(t); return this; },
            val(v) { if (v === undefined) return this._val; this._val = v; return this; },
            prop(k, v) { if (v === undefined) return this._props[k]; this._props[k] = v; return this; },
            on(ev, fn) { this._on[ev] = fn; return this; },
            append(h) { this._html += h; return this; },
            fire(ev) { return this._on[ev].call(this); },
        });
    };
    $.elements = elements;
    return $;
}

const EVENT_TYPES = {
    TEXT_COMPLETION_SETTINGS_READY: 'text_completion_settings_ready',
    GENERATE_AFTER_DATA: 'generate_after_data',
    ONLINE_STATUS_CHANGED: 'online_status_changed',
};

// getContext() as SillyTavern 1.13+ builds it (st-context.js): textCompletionSettings, getTextGenServer.
function fakeContext(overrides = {}) {
    const ctx = {
        eventSource: fakeEventSource(),
        eventTypes: EVENT_TYPES,
        event_types: EVENT_TYPES,
        extensionSettings: {},
        saves: 0,
        saveSettingsDebounced() { ctx.saves += 1; },
        mainApi: 'textgenerationwebui',
        textCompletionSettings: { type: 'koboldcpp', ollama_model: 'tiny:latest',
            server_urls: { koboldcpp: 'http://127.0.0.1:5001/' } },
        getTextGenServer: (type) => ctx.textCompletionSettings.server_urls[type ?? ctx.textCompletionSettings.type],
        onlineStatus: 'koboldcpp/tiny',
        ...overrides,
    };
    return ctx;
}

// getContext() as SillyTavern 1.12.6 builds it (script.js): no textCompletionSettings, no getTextGenServer;
// the API type and URLs live only in the page's controls (a fake document here, or none at all).
function oldContext(overrides = {}) {
    const ctx = fakeContext(overrides);
    delete ctx.textCompletionSettings;
    delete ctx.getTextGenServer;
    return ctx;
}

function fakeDocument(values) {
    return { querySelector: (sel) => (sel in values ? { value: values[sel] } : null) };
}

const SHOW = {
    details: {},
    composite: {
        alpha: 1.0,
        members: {
            large: { architecture: 'llama', parameter_count: 1.2e9, quantization: 'Q4_K_M' },
            base: { architecture: 'llama', parameter_count: 135e6, quantization: 'F16' },
            tuned: { architecture: 'llama', parameter_count: 135e6, quantization: 'F16' },
        },
    },
};

function fakeFetch(calls) {
    return async (url, options) => {
        calls.push({ url: String(url), body: options?.body && JSON.parse(options.body) });
        return { ok: true, status: 200, json: async () => SHOW };
    };
}

test('manifest names the files that exist', async () => {
    const manifest = JSON.parse(await readFile(new URL('manifest.json', EXT), 'utf8'));
    for (const key of ['display_name', 'loading_order', 'requires', 'optional', 'js', 'css', 'author', 'version',
        'homePageUrl']) {
        assert.ok(key in manifest, key);
    }
    assert.equal(manifest.js, 'index.js');
    assert.equal(manifest.css, 'style.css');
    const html = await readFile(new URL('settings.html', EXT), 'utf8');
    for (const id of ['nanocommander_alpha', 'nanocommander_member', 'nanocommander_members', 'nanocommander_enabled']) {
        assert.ok(html.includes(`id="${id}"`), id);
    }
});

test('applyAlpha sets alpha for supported API types only', () => {
    const settings = { enabled: true, alpha: 0.5, member: 'composite' };
    for (const api of ['koboldcpp', 'kobold', 'ooba', 'ollama', 'generic']) {
        assert.deepEqual(applyAlpha({ prompt: 'x' }, settings, api), { prompt: 'x', alpha: 0.5 });
    }
    for (const api of ['openai', 'novel', 'vllm', 'tabby', null]) {
        assert.deepEqual(applyAlpha({ prompt: 'x' }, settings, api), { prompt: 'x' });
    }
    assert.deepEqual(applyAlpha({ prompt: 'x' }, { ...settings, enabled: false }, 'koboldcpp'), { prompt: 'x' });
    assert.deepEqual(applyAlpha({}, { ...settings, member: 'large', alpha: 9 }, 'koboldcpp'), { alpha: 4, member: 'large' });
});

test('settings load with defaults and keep saved values', () => {
    const store = { other: { keep: 1 }, [MODULE]: { alpha: 2.5, member: 'bogus' } };
    const settings = loadSettings(store);
    assert.equal(settings.alpha, 2.5);
    assert.equal(settings.member, 'composite');
    assert.equal(settings.enabled, true);
    assert.equal(store[MODULE], settings);
    assert.deepEqual(store.other, { keep: 1 });
    // the URL 0.1.0 saved as its default now follows the connection; a URL the user typed is kept
    assert.equal(loadSettings({ [MODULE]: { serverUrl: 'http://127.0.0.1:11434' } }).serverUrl, '');
    assert.equal(loadSettings({ [MODULE]: { serverUrl: 'http://box:11434' } }).serverUrl, 'http://box:11434');
});

test('api type across getContext() shapes: body api_type, textCompletionSettings, page controls', () => {
    const doc = fakeDocument({ '#main_api': 'textgenerationwebui', '#textgen_type': 'ooba' });
    assert.equal(currentApiType(fakeContext()), 'koboldcpp');
    assert.equal(currentApiType(oldContext(), null, doc), 'ooba');
    assert.equal(currentApiType(oldContext(), null, null), null);
    assert.equal(currentApiType(oldContext(), { api_type: 'koboldcpp' }, null), 'koboldcpp');
    assert.equal(currentApiType({}, null, doc), 'ooba'); // no mainApi at all: the #main_api select
    assert.equal(currentApiType(oldContext({ mainApi: 'kobold' }), null, null), 'kobold');
});

test('the member list follows the connected API URL unless one is set', () => {
    assert.equal(serverRoot('http://127.0.0.1:5001/api/'), 'http://127.0.0.1:5001');
    assert.equal(serverRoot('http://h:11434/v1'), 'http://h:11434');
    assert.equal(connectedUrl(fakeContext(), 'koboldcpp'), 'http://127.0.0.1:5001');
    const viaGetter = fakeContext({ textCompletionSettings: { type: 'ooba' } });
    viaGetter.getTextGenServer = () => 'http://127.0.0.1:5005';
    assert.equal(connectedUrl(viaGetter, 'ooba'), 'http://127.0.0.1:5005');
    const doc = fakeDocument({ '#koboldcpp_api_url_text': 'http://localhost:5001', '#api_url_text': 'http://k:5001/api' });
    assert.equal(connectedUrl(oldContext(), 'koboldcpp', doc), 'http://localhost:5001');
    assert.equal(connectedUrl(oldContext(), 'kobold', doc), 'http://k:5001');
    assert.equal(connectedUrl(oldContext(), 'koboldcpp', null), null);
    assert.equal(serverUrl({ serverUrl: '' }, oldContext(), 'koboldcpp', 'http://127.0.0.1:5002/', null),
        'http://127.0.0.1:5002');
    assert.equal(serverUrl({ serverUrl: '' }, oldContext(), 'koboldcpp', null, null), 'http://127.0.0.1:11434');
    assert.equal(serverUrl({ serverUrl: 'http://box:9/' }, fakeContext(), 'koboldcpp'), 'http://box:9');
});

test('SillyTavern 1.12.6 shape without a DOM: alpha still lands, the URL comes from the request', async () => {
    const ctx = oldContext();
    const { serverUrl: urlNow } = await init(ctx, { $: null });
    ctx.extensionSettings[MODULE].alpha = 0.25;
    const params = { prompt: 'Hi', api_type: 'koboldcpp', api_server: 'http://127.0.0.1:5001' };
    await ctx.eventSource.emit(EVENT_TYPES.TEXT_COMPLETION_SETTINGS_READY, params);
    assert.equal(params.alpha, 0.25);
    assert.equal(urlNow(), 'http://127.0.0.1:5001');
    const other = { prompt: 'Hi', api_type: 'vllm' };
    await ctx.eventSource.emit(EVENT_TYPES.TEXT_COMPLETION_SETTINGS_READY, other);
    assert.equal('alpha' in other, false);
});

test('api type, model and member description', () => {
    assert.equal(currentApiType({ mainApi: 'textgenerationwebui', textCompletionSettings: { type: 'ollama' } }), 'ollama');
    assert.equal(currentApiType({ mainApi: 'kobold' }), 'kobold');
    assert.equal(currentApiType({ mainApi: 'openai' }), 'openai');
    assert.equal(currentModel({ onlineStatus: 'koboldcpp/tiny' }, 'koboldcpp'), 'tiny');
    assert.equal(currentModel({ onlineStatus: 'no_connection' }, 'koboldcpp'), null);
    assert.equal(currentModel({ textCompletionSettings: { ollama_model: 'm' } }, 'ollama'), 'm');
    const text = describeMembers(SHOW);
    assert.match(text, /recipe alpha: 1/);
    assert.match(text, /large: llama, 1\.2B, Q4_K_M/);
    assert.match(text, /tuned: llama, 135M, F16/);
    assert.equal(describeMembers({ details: {} }), 'Not a NanoCommander composite model.');
});

test('init registers settings, UI and handlers; generate events get alpha', async () => {
    const ctx = fakeContext();
    const $ = fakeJQuery();
    const calls = [];
    const html = await readFile(new URL('settings.html', EXT), 'utf8');
    await init(ctx, { $, fetch: fakeFetch(calls), loadHtml: async () => html });

    assert.deepEqual(ctx.extensionSettings[MODULE], { enabled: true, alpha: 1, member: 'composite',
        serverUrl: '' });
    assert.ok($.elements['#extensions_settings2']._html.includes('nanocommander_alpha'));
    assert.equal(ctx.eventSource.handlers[EVENT_TYPES.TEXT_COMPLETION_SETTINGS_READY].length, 1);
    // the member list came from POST /api/show for the connected model
    // ... on the connected API's URL (KoboldCpp type at :5001)
    assert.deepEqual(calls[0], { url: 'http://127.0.0.1:5001/api/show', body: { model: 'tiny' } });
    assert.match($.elements['#nanocommander_members'].text(), /^tiny\nrecipe alpha: 1/);

    // the slider saves and shows its value
    $('#nanocommander_alpha').val('0.35').fire('input');
    assert.equal(ctx.extensionSettings[MODULE].alpha, 0.35);
    assert.equal($.elements['#nanocommander_alpha_value'].text(), '0.35');
    assert.ok(ctx.saves >= 1);

    // KoboldCpp text completion: the request body gets alpha
    const params = { prompt: 'Hi', max_new_tokens: 10 };
    await ctx.eventSource.emit(EVENT_TYPES.TEXT_COMPLETION_SETTINGS_READY, params);
    assert.equal(params.alpha, 0.35);
    assert.equal('member' in params, false);

    // Ollama text completion too
    ctx.textCompletionSettings.type = 'ollama';
    const ollama = { prompt: 'Hi' };
    await ctx.eventSource.emit(EVENT_TYPES.TEXT_COMPLETION_SETTINGS_READY, ollama);
    assert.equal(ollama.alpha, 0.35);

    // another text-completion backend is left alone
    ctx.textCompletionSettings.type = 'vllm';
    const vllm = { prompt: 'Hi' };
    await ctx.eventSource.emit(EVENT_TYPES.TEXT_COMPLETION_SETTINGS_READY, vllm);
    assert.deepEqual(vllm, { prompt: 'Hi' });

    // KoboldAI Classic goes through GENERATE_AFTER_DATA; chat completion is left alone
    ctx.mainApi = 'kobold';
    const kobold = { prompt: 'Hi', max_length: 10 };
    await ctx.eventSource.emit(EVENT_TYPES.GENERATE_AFTER_DATA, kobold, false);
    assert.equal(kobold.alpha, 0.35);
    ctx.mainApi = 'openai';
    const chat = { prompt: [{ role: 'user', content: 'Hi' }] };
    await ctx.eventSource.emit(EVENT_TYPES.GENERATE_AFTER_DATA, chat, false);
    assert.deepEqual(chat, { prompt: [{ role: 'user', content: 'Hi' }] });

    // member choice and the enable switch
    ctx.mainApi = 'textgenerationwebui';
    ctx.textCompletionSettings.type = 'koboldcpp';
    $('#nanocommander_member').val('tuned').fire('change');
    const tuned = {};
    await ctx.eventSource.emit(EVENT_TYPES.TEXT_COMPLETION_SETTINGS_READY, tuned);
    assert.deepEqual(tuned, { alpha: 0.35, member: 'tuned' });
    $('#nanocommander_enabled').prop('checked', false).fire('change');
    const off = {};
    await ctx.eventSource.emit(EVENT_TYPES.TEXT_COMPLETION_SETTINGS_READY, off);
    assert.deepEqual(off, {});
});

test('unreachable server is reported in the drawer, not thrown', async () => {
    const ctx = fakeContext();
    const $ = fakeJQuery();
    const failing = async () => { throw new Error('connection refused'); };
    await init(ctx, { $, fetch: failing, loadHtml: async () => '<div></div>' });
    assert.match($.elements['#nanocommander_members'].text(), /cannot reach NanoCommander \(connection refused\)/);
});

test('without jQuery (no DOM) init still registers the event handlers', async () => {
    const ctx = fakeContext();
    const { settings } = await init(ctx, { $: null });
    assert.equal(settings, ctx.extensionSettings[MODULE]);
    const params = {};
    await ctx.eventSource.emit(EVENT_TYPES.TEXT_COMPLETION_SETTINGS_READY, params);
    assert.equal(params.alpha, 1);
});
